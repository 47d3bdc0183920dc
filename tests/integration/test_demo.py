"""`python -m devkit.demo --no-docker`: the real container/train and container/serve, end to end."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from devkit import demo


@pytest.mark.slow
def test_demo_without_docker_trains_serves_and_reports(mnist_dir: Path, repo_root: Path) -> None:
    env = dict(os.environ, MNIST_DIR=str(mnist_dir))
    result = subprocess.run(
        [sys.executable, "-m", "devkit.demo", "--no-docker", "--epochs", "1"],
        cwd=repo_root, env=env, capture_output=True, text=True, timeout=900,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert "--no-docker: running container/train and container/serve from the project's virtualenv" in out

    # One line per JSON digit and one for the PNG, each with a prediction and the true label.
    predictions = re.findall(r"predicted\s+(\S+)\s+\(p=[0-9.]+\)\s+true\s+(\d)\s+(ok|WRONG)", out)
    assert len(predictions) == demo.JSON_DIGITS + 1, out[-4000:]
    assert sum(status == "ok" for *_, status in predictions) >= demo.JSON_DIGITS - 1, out[-4000:]

    accuracy = re.search(r"test accuracy through HTTP: ([0-9.]+)% \((\d+)/10000;", out)
    assert accuracy, out[-4000:]
    # One epoch of the default CNN gets near 98%; chance is 10%.
    assert float(accuracy.group(1)) > 95.0, accuracy.group(0)
    assert "test_accuracy reported by training:" in out, out[-4000:]
    assert re.search(r"demo wall-clock time: [0-9.]+ s", out)

    # It cleaned up: the temporary /opt/ml is gone and nothing listens on the server's port any more.
    base = re.search(r"/opt/ml is (\S+);", out)
    assert base and not Path(base.group(1)).exists(), "temporary folder left behind"
    port = int(re.search(r"Serving the model on port (\d+)", out).group(1))
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, f"something still listens on port {port}"


def test_no_engine_and_no_ensure_script_falls_back(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(demo.shutil, "which", lambda name: None)
    monkeypatch.setattr(demo, "ENSURE_DOCKER", tmp_path / "missing.sh")
    up, reason = demo.docker_available()
    assert not up and "scripts/ensure-docker.sh is missing" in reason


def test_a_failing_ensure_script_falls_back(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    script = tmp_path / "ensure-docker.sh"
    script.write_text("echo cannot start docker here >&2\nexit 3\n")
    monkeypatch.setattr(demo.shutil, "which", lambda name: None)
    monkeypatch.setattr(demo, "ENSURE_DOCKER", script)
    up, reason = demo.docker_available()
    assert not up and "scripts/ensure-docker.sh failed (exit 3)" in reason
