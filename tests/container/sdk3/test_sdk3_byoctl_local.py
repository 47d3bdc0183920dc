"""byoctl --local under SDK 3.x: train (ModelTrainer's local container mode), deploy, invoke, delete and
transform (SDK 3's local session), the same commands and output as under SDK 2 (tests/container/
test_local_mode.py runs the same round trip there)."""

from __future__ import annotations

from pathlib import Path

import pytest

from devkit.idx import mnist_arrays
from tests.container.test_local_mode import byoctl_local_round_trip

pytestmark = [pytest.mark.container, pytest.mark.slow]


def test_byoctl_local_round_trip_under_sdk3(offline, cpu_image, mnist_dir, tmp_path):
    from byoctl.leftovers import local_leftovers_removed

    images, labels = mnist_arrays(mnist_dir, "test")
    with local_leftovers_removed():
        # The model trained here is the one deployed: the CNN, for the invocation's accuracy threshold.
        byoctl_local_round_trip(cpu_image, (images, labels), mnist_dir, tmp_path, train_records=12000,
                                hyperparameters=("epochs=1", "model=cnn"), min_accuracy=(0.93, 0.93))


def test_byoctl_local_training_failure_under_sdk3(offline, cpu_image, tmp_path):
    """A failing local job: the container's reason on screen, one error line, nothing left behind."""
    import subprocess
    import tempfile

    from tests.container.test_local_mode import _byoctl

    def trainer_folders() -> set[str]:
        """Compose folders of byoctl's ModelTrainer jobs that still have a container (any state)."""
        listed = subprocess.run(["docker", "ps", "-a", "--filter", "label=com.docker.compose.project", "--format",
                                 '{{.Label "com.docker.compose.project.working_dir"}}'], capture_output=True, text=True)
        return {line for line in listed.stdout.split() if Path(line).name.startswith("byoctl-train-")}

    (tmp_path / "training").mkdir()
    (tmp_path / "training" / "notes.txt").write_text("no IDX files here")
    before = trainer_folders()
    folders = set(Path(tempfile.gettempdir()).glob("byoctl-train-*"))
    result = _byoctl("train", "--local", "--image", cpu_image, "--channel", f"training=file://{tmp_path / 'training'}",
                     "--output-path", f"file://{tmp_path / 'out'}", "--hp", "epochs=0", "--job-name", "bad-hp")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "epochs" in result.stdout and "[1, 10000]" in result.stdout  # train's own reason, from the container
    assert result.stderr.strip().splitlines()[-1].startswith("byoctl: error: local mode: "), result.stderr
    assert not (tmp_path / "out" / "model.tar.gz").exists()
    assert set(Path(tempfile.gettempdir()).glob("byoctl-train-*")) == folders
    assert trainer_folders() == before
