"""bench/load_bench.py in a short run: it drives the real server, kills workers, and its checks hold
(no error without kills, at most one failed request per connection a killed worker held, every worker replaced,
/ping always 200).
The figures themselves are the bench's to print (docs/reliability.md), never asserted here."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from devkit.project import ROOT

BENCH = ROOT / "bench" / "load_bench.py"


@pytest.mark.slow
def test_load_bench_short_run_passes_its_checks(trained_model_dir):
    result = subprocess.run([sys.executable, str(BENCH), "--seconds", "5", "--kill-every", "2",
                             "--model-dir", str(trained_model_dir)], capture_output=True, text=True, timeout=180)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    steady = re.search(r"^steady +\d+ +(\d+) .* (\d+) +- +- +- +-$", result.stdout, re.M)
    assert steady and int(steady.group(1)) > 0 and int(steady.group(2)) == 0, result.stdout
    kills = re.search(r"^SIGKILL a worker every 2 s +\d+ +(\d+) .* (\d+) +(\d+) +(\d+) +[\d.]+s +0/(\d+)$",
                      result.stdout, re.M)
    assert kills, result.stdout
    requests, errors, killed, replaced, pings = map(int, kills.groups())
    held = re.search(r"^    connections each killed worker held: (\d+), (\d+)$", result.stdout, re.M)
    assert held, result.stdout
    # Only requests on a killed worker's connections may fail: at most one per connection it held.
    assert requests > 0 and killed == 2 and replaced == 2 and pings > 0
    assert errors <= sum(max(int(count), 1) for count in held.groups()), result.stdout
