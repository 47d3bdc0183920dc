"""README.md's script-mode section shows the example scripts the tests run, word for word, and the
SM_* variables it lists are ones script mode sets."""

import re

import pytest

EXAMPLES = ("gluon", "module")


def section(repo_root) -> str:
    readme = (repo_root / "README.md").read_text()
    assert "<!-- section: script-mode" in readme, "README.md lacks the script-mode section"
    return readme.split("<!-- section: script-mode")[1].split("<!-- /section: script-mode")[0]


@pytest.mark.parametrize("example", EXAMPLES)
def test_the_readme_shows_each_example_script_as_it_is(repo_root, example):
    path = f"examples/script-mode/{example}/train.py"
    block = re.search(rf"`{re.escape(path)}`:?\s*\n+```python\n(.*?)```", section(repo_root), re.S)
    assert block, f"the script-mode section does not show {path}"
    assert block.group(1) == (repo_root / path).read_text()


def test_the_variables_the_readme_lists_are_set(repo_root, tmp_path):
    from mxnet_byoc.train.script import smenv

    listed = set(re.findall(r"`(SM_[A-Z_]+)(?:<[A-Z]+>)?`", section(repo_root)))
    assert len(listed) >= 20, listed
    base = tmp_path / "ml"
    (base / "input" / "config").mkdir(parents=True)
    (base / "input" / "config" / "hyperparameters.json").write_text('{"sagemaker_program": "t.py", "epochs": "1"}')
    (base / "input" / "data" / "training").mkdir(parents=True)
    names = set(smenv.ScriptEnv.load(base).env_vars())
    prefixes = {"SM_CHANNEL_", "SM_HP_"}
    missing = {v for v in listed if v not in names and v not in prefixes}
    assert not missing, missing
