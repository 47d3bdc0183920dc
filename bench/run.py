#!/usr/bin/env python3
"""`make bench`: runs the benches' modes, each in a process of its own, and keeps what each measured in
bench/results/ (its figures, its printed output, the machine, the date); scripts/gen-readme-tables.sh then writes
docs/performance.md and README's Performance table from there.

    .venv/bin/python bench/run.py [PART ...]        (make bench BENCH="PART ...")

A PART is a bench (training, horovod, serving, images) or one of its modes (serving.batch, training.accuracy);
none: every bench's default modes. Exits non-zero when a mode failed, after recording it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
BENCHES = {"training": "train_bench.py", "horovod": "horovod_bench.py", "serving": "serve_bench.py",
           "images": "image_bench.py"}


def machine() -> dict[str, str]:
    """The CPU model, cores, memory and load average of this machine."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                 "unknown CPU")
    kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
               if line.startswith("MemTotal:"))
    return {"cpu": model, "cores": f"{len(os.sched_getaffinity(0))} of {os.cpu_count()}",
            "memory": f"{kib / 1024 ** 2:.1f} GiB", "load": " ".join(f"{x:.2f}" for x in os.getloadavg())}


def sections(parts: list[str]) -> list[tuple[str, str | None, int]]:
    """(bench, mode, the mode's place among the bench's defaults) for each part asked for: a bench's default
    modes, or the mode named."""
    found = []
    for part in parts or list(BENCHES):
        name, _, mode = part.partition(".")
        if name not in BENCHES:
            sys.exit(f"unknown bench {name!r}: expected one of {', '.join(BENCHES)} (or BENCH.MODE)")
        listed = subprocess.run([sys.executable, str(BENCH / BENCHES[name]), "--list-modes"], capture_output=True,
                                text=True, check=True).stdout.split()
        found += [(name, m, listed.index(m) if m in listed else len(listed)) for m in ([mode] if mode else listed)]
    return found


def run(name: str, mode: str | None, position: int) -> dict:
    """One mode run, its output passed through as it comes; what bench/results/NAME.MODE.json keeps."""
    command = [f"bench/{BENCHES[name]}", *(["--mode", mode] if mode else [])]
    record = {"section": f"{name}.{mode}" if mode else name, "position": position,
              "command": " ".join([".venv/bin/python", *command]),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine()}
    with tempfile.TemporaryDirectory() as tmp:
        figures = Path(tmp) / "figures.json"
        process = subprocess.Popen([sys.executable, *command, *(["--figures", str(figures)] if mode else [])],
                                   cwd=BENCH.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = []
        for line in process.stdout:
            sys.stdout.write(line)
            lines.append(line)
        record["exit"] = process.wait()
        record["figures"] = json.loads(figures.read_text()) if figures.exists() else []
    record["load_at_end"] = machine()["load"]
    record["output"] = "".join(lines)
    return record


def main() -> int:
    chosen = sections(sys.argv[1:])
    RESULTS.mkdir(exist_ok=True)
    failed = []
    for name, mode, position in chosen:
        record = run(name, mode, position)
        (RESULTS / f"{record['section']}.json").write_text(json.dumps(record, indent=1) + "\n")
        if record["exit"]:
            failed.append(record["section"])
    (RESULTS / "latest.json").write_text(json.dumps(
        {"sections": [f"{n}.{m}" if m else n for n, m, _ in chosen], "failed": failed}, indent=1) + "\n")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
