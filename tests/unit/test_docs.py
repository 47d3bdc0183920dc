"""README.md and docs/ document what the code does: the generated parts must match their sources
(scripts/generated_docs.py, which scripts/gen-readme-tables.sh and `make bench` run)."""

import importlib.util
import json
import re

import pytest

from devkit.project import ROOT
from mxnet_byoc.train import hyperparameters, metrics

_spec = importlib.util.spec_from_file_location("generated_docs", ROOT / "scripts" / "generated_docs.py")
generated_docs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(generated_docs)


def test_readme_hyperparameter_table_is_generated_from_specs(repo_root):
    readme = (repo_root / "README.md").read_text()
    block = re.search(r"<!-- hyperparameters:begin -->\n(.*?)\n<!-- hyperparameters:end -->", readme, re.S)
    assert block, "README.md lacks the generated hyperparameter table"
    assert block.group(1).strip() == hyperparameters.markdown_table().strip()


def test_readme_metric_definitions_match_metrics_module(repo_root):
    readme = (repo_root / "README.md").read_text()
    for definition in metrics.metric_definitions():
        assert f'{{"Name": "{definition["Name"]}", "Regex": r"{definition["Regex"]}"}}' in readme


def test_every_generated_part_is_what_its_source_gives():
    assert generated_docs.stale() == [], "run scripts/gen-readme-tables.sh"


def record(section: str, position: int, figures: list[dict], exit_code: int = 0) -> dict:
    return {"section": section, "position": position, "command": f".venv/bin/python bench/x.py --mode {section}",
            "date": "DATE", "machine": {"cpu": "Some CPU", "cores": "2 of 2", "memory": "23.5 GiB", "load": "0.50"},
            "exit": exit_code, "figures": figures, "load_at_end": "1.00", "output": f"the output of {section}\n"}


def figure(key: str, ratio: float | None, target: str = "", met: bool | None = None) -> dict:
    return {"key": key, "what": f"what {key} is", "ours": "10 req/s", "baseline": "plain 20 req/s", "ratio": ratio,
            "target": target, "met": met}


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setattr(generated_docs, "RESULTS", tmp_path)
    return tmp_path


def test_performance_lists_each_section_with_its_run_figures_and_verdicts(results):
    records = [record("serving.batch", 1, [figure("serving.batch.cnn.uint8", 0.5, ">= 0.80", False)]),
               record("serving.one-image", 0, [figure("serving.one-image.cnn.c32", 0.75, ">= 0.70", True),
                                               figure("serving.one-image.cnn.ceiling.c32", 1.1)]),
               record("training.accuracy", 0, [], exit_code=2)]
    for one in records:
        (results / f"{one['section']}.json").write_text(json.dumps(one))
    (results / "latest.json").write_text(json.dumps({"sections": ["serving.one-image", "training.accuracy"],
                                                     "failed": ["training.accuracy"]}))
    text = generated_docs.performance()
    assert text.startswith("The latest `make bench` ran serving.one-image, training.accuracy; failed: "
                           "training.accuracy.")
    # Training first, then serving in the order of its modes.
    headings = re.findall(r"^### (\S+)$", text, re.M)
    assert headings == ["training.accuracy", "serving.one-image", "serving.batch"]
    assert "run DATE on Some CPU (2 of 2 cores, 23.5 GiB); load average 0.50 at the start, 1.00 at the end" in text
    assert "**It failed** (exit 2)" in text
    assert "| what serving.batch.cnn.uint8 is | 10 req/s | plain 20 req/s | 0.500 | >= 0.80 | **NOT met** |" in text
    assert "| what serving.one-image.cnn.c32 is | 10 req/s | plain 20 req/s | 0.750 | >= 0.70 | met |" in text
    assert "| what serving.one-image.cnn.ceiling.c32 is | 10 req/s | plain 20 req/s | 1.100 |  |  |" in text
    assert "the output of serving.batch" in text

    summary = generated_docs.performance_summary()
    rows = [line for line in summary.splitlines() if line.startswith("| what")]
    assert rows == ["| what serving.one-image.cnn.c32 is | 10 req/s | plain 20 req/s | 0.750 | >= 0.70 | met |",
                    "| what serving.batch.cnn.uint8 is | 10 req/s | plain 20 req/s | 0.500 | >= 0.80 | **NOT met** |"]


def test_without_results_the_parts_say_how_to_make_them(results):
    assert "make bench" in generated_docs.performance()
    assert "make bench" in generated_docs.performance_summary()


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_between_the_docs_reach_a_file_and_a_heading(repo_root):
    pages = [repo_root / "README.md", *sorted((repo_root / "docs").glob("*.md"))]
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            assert linked.exists(), f"{page.name} links to {target}, which does not exist"
            if anchor and linked.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", linked.read_text(), re.M)
                assert anchor in {slug(h) for h in headings}, f"{page.name} links to {target}: no such heading"


def test_the_readme_stays_short(repo_root):
    assert len((repo_root / "README.md").read_text().splitlines()) <= 400
