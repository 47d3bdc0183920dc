"""docs/script-mode.md shows the example scripts the tests run, word for word, and the SM_* variables it lists
are ones script mode sets."""

import re

import pytest

EXAMPLES = ("gluon", "module")


def training_part(repo_root) -> str:
    text = (repo_root / "docs" / "script-mode.md").read_text()
    assert "## Your training script" in text, "docs/script-mode.md lacks its training part"
    return text.split("## Your training script")[1].split("## Your inference code")[0]


@pytest.mark.parametrize("example", EXAMPLES)
def test_the_docs_show_each_example_script_as_it_is(repo_root, example):
    path = f"examples/script-mode/{example}/train.py"
    block = re.search(rf"`{re.escape(path)}`:?\s*\n+```python\n(.*?)```", training_part(repo_root), re.S)
    assert block, f"docs/script-mode.md does not show {path}"
    assert block.group(1) == (repo_root / path).read_text()


def test_the_variables_the_docs_list_are_set(repo_root, tmp_path):
    from mxnet_byoc.train.script import smenv

    listed = set(re.findall(r"`(SM_[A-Z_]+)(?:<[A-Z]+>)?`", training_part(repo_root)))
    assert len(listed) >= 20, listed
    base = tmp_path / "ml"
    (base / "input" / "config").mkdir(parents=True)
    (base / "input" / "config" / "hyperparameters.json").write_text('{"sagemaker_program": "t.py", "epochs": "1"}')
    (base / "input" / "data" / "training").mkdir(parents=True)
    names = set(smenv.ScriptEnv.load(base).env_vars())
    prefixes = {"SM_CHANNEL_", "SM_HP_"}
    missing = {v for v in listed if v not in names and v not in prefixes}
    assert not missing, missing
