"""The serving bench's modes in short runs, so that a mode which no longer runs against the server as it is (a
handler of its own written for an older interface, say) fails here rather than in `make bench`: the load mode drives
the real server under keep-alive load, kills workers, and its targets hold (no error without kills, at most 2 failed
requests per kill, every worker replaced); the one-image mode measures every server it compares. The figures
themselves are the bench's to print (docs/performance.md), never asserted here."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from devkit.project import ROOT

BENCH = ROOT / "bench" / "serve_bench.py"


@pytest.mark.slow
def test_load_mode_short_run_meets_its_targets(trained_model_dir, tmp_path):
    figures = tmp_path / "figures.json"
    result = subprocess.run([sys.executable, str(BENCH), "--mode", "load", "--duration", "6", "--kill-every", "2",
                             "--model-dir", str(trained_model_dir), "--figures", str(figures)],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    found = {figure["key"]: figure for figure in json.loads(figures.read_text())}
    assert set(found) == {"serving.load.steady", "serving.load.kills", "serving.load.replacement"}, output
    assert all(figure["met"] for figure in found.values()), output[-4000:]
    kills = int(re.search(r"for (\d+) kills", found["serving.load.kills"]["ours"]).group(1))
    assert kills >= 2, output  # the storm happened


@pytest.mark.slow
def test_one_image_mode_short_run_measures_ours_the_plain_endpoint_and_the_ceiling(trained_model_dir, tmp_path):
    figures = tmp_path / "figures.json"
    command = [sys.executable, str(BENCH), "--mode", "one-image", "--rounds", "1", "--duration", "1",
               "--profile-seconds", "0", "--model-dir", str(trained_model_dir), "--figures", str(figures)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]  # wrk stops the bench on any non-2xx answer from any server
    keys = {figure["key"] for figure in json.loads(figures.read_text())}
    for subject in ("given", "transform_fn"):
        assert {f"serving.one-image.{subject}.c{c}" for c in (1, 8, 32)} <= keys, output[-4000:]
    assert {f"serving.one-image.given.ceiling.c{c}" for c in (1, 8, 32)} <= keys, sorted(keys)
