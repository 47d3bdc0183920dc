#!/usr/bin/env python3
"""The generated parts of README.md and docs/, each from its single source, between `<!-- NAME:begin -->` and
`<!-- NAME:end -->`:
- hyperparameters (README): mxnet_byoc.train.hyperparameters' specs;
- performance-summary (README) and performance (docs/performance.md): the benches' figures in bench/results/,
  which `make bench` (bench/run.py) writes.

    .venv/bin/python scripts/generated_docs.py            rewrite every part
    .venv/bin/python scripts/generated_docs.py --check    exit 1, naming the stale parts, when any is stale
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

from mxnet_byoc.train import hyperparameters

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
BENCHES = ("training", "serving", "fastpath", "images")  # the order of docs/performance.md's sections
# README's Performance table: a few figures of the latest run, by key (bench/figures.py's Figure.key).
SUMMARY = ["training.cnn.accuracy", "training.cnn.seconds", "training.throughput.mlp", "training.throughput.cnn",
           "serving.one-image.cnn.c32", "serving.one-image.mlp.c32", "serving.batch.cnn.uint8",
           "serving.batch.mlp.uint8", "serving.startup.cnn.seconds", "serving.startup.cnn.pss",
           "serving.aws.transform_fn.c32", "serving.aws.default-handlers.c32", "images.cpu.size", "images.gpu.size"]


def results() -> list[dict]:
    """Every section's record in bench/results/, in the benches' order and each bench's order of modes."""
    records = [json.loads(path.read_text()) for path in RESULTS.glob("*.json") if path.name != "latest.json"]
    return sorted(records, key=lambda r: (BENCHES.index(r["section"].split(".")[0]), r.get("position", 0)))


def figure_row(figure: dict) -> str:
    ratio = "" if figure["ratio"] is None else f"{figure['ratio']:.3f}"
    verdict = "" if not figure["target"] else ("met" if figure["met"] else "**NOT met**")
    cells = [figure["what"], figure["ours"], figure["baseline"], ratio, figure["target"], verdict]
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


TABLE_HEAD = "| figure | ours | baseline | ratio | target | |\n| --- | --- | --- | --- | --- | --- |"


def performance() -> str:
    records = results()
    if not records:
        return "No bench has run yet: `make bench` writes this part."
    latest = json.loads((RESULTS / "latest.json").read_text()) if (RESULTS / "latest.json").exists() else {}
    failed = f"; failed: {', '.join(latest['failed'])}" if latest.get("failed") else ", none failed"
    lines = [f"The latest `make bench` ran {', '.join(latest.get('sections', [])) or 'nothing'}{failed}. A section it "
             "did not run keeps the figures of the run it names."]
    for record in records:
        machine = record["machine"]
        lines += ["", f"### {record['section']}", "",
                  f"`{record['command']}`, run {record['date']} on {machine['cpu']} ({machine['cores']} cores, "
                  f"{machine['memory']}); load average {machine['load']} at the start, {record['load_at_end']} at "
                  "the end."]
        if record["exit"]:
            lines += ["", f"**It failed** (exit {record['exit']}): the end of its output says why."]
        if record["figures"]:
            lines += ["", TABLE_HEAD, *map(figure_row, record["figures"])]
        output = record["output"] if not record["exit"] else record["output"][-6000:]
        lines += ["", "<details><summary>What it printed</summary>", "", "```text", output.rstrip("\n"), "```", "",
                  "</details>"]
    return "\n".join(lines)


def performance_summary() -> str:
    figures = {f["key"]: f for record in results() if not record["exit"] for f in record["figures"]}
    rows = [figure_row(figures[key]) for key in SUMMARY if key in figures]
    if not rows:
        return "No bench has run yet: `make bench` writes this table and [docs/performance.md](docs/performance.md)."
    return "\n".join([TABLE_HEAD, *rows, "", "From the latest `make bench`; every figure, with its machine, date and "
                      "how it is measured: [docs/performance.md](docs/performance.md)."])


PARTS: dict[str, tuple[str, Callable[[], str]]] = {
    "hyperparameters": ("README.md", hyperparameters.markdown_table),
    "performance-summary": ("README.md", performance_summary),
    "performance": ("docs/performance.md", performance),
}


def region(name: str) -> re.Pattern:
    return re.compile(rf"<!-- {name}:begin -->\n.*?<!-- {name}:end -->", re.S)


def generated(name: str) -> str:
    """The part `name` as it belongs in its file, markers included."""
    return f"<!-- {name}:begin -->\n{PARTS[name][1]()}\n<!-- {name}:end -->"


def stale() -> list[str]:
    """The parts whose text differs from what their source gives (or whose markers are missing)."""
    found = []
    for name, (file, _) in PARTS.items():
        match = region(name).search((ROOT / file).read_text())
        if not match or match.group(0) != generated(name):
            found.append(f"{file}: {name}")
    return found


def write() -> None:
    for name, (file, _) in PARTS.items():
        path, text = ROOT / file, generated(name)
        old = path.read_text()
        if not region(name).search(old):
            sys.exit(f"{file} has no <!-- {name}:begin --> ... <!-- {name}:end --> markers")
        path.write_text(region(name).sub(lambda _, text=text: text, old))


if __name__ == "__main__":
    if sys.argv[1:] == ["--check"]:
        parts = stale()
        if parts:
            sys.exit("stale generated parts (run scripts/gen-readme-tables.sh): " + "; ".join(parts))
    else:
        write()
