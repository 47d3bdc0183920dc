"""Training under faults: killed mid-epoch, a full disk, a read-only checkpoint folder, one bad file.

Mounting tmpfs and read-only binds needs root, as the tests and CI run here.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from devkit import idx, jobs

pytestmark = pytest.mark.slow

MLP = {"model": "mlp", "log_interval": "5"}


@pytest.fixture(scope="module")
def channels(mnist_dir, tmp_path_factory) -> Path:
    return idx.write_subsets(mnist_dir, tmp_path_factory.mktemp("faults-data"), 6000, 1000)


def _run(base: Path) -> tuple[int, str]:
    proc = jobs.start_train(base)
    out, _ = proc.communicate(timeout=300)
    return proc.returncode, out


def _first_line(base: Path) -> str:
    return (base / "output" / "failure").read_text().splitlines()[0]


@pytest.fixture
def mount(tmp_path):
    mounted: list[Path] = []

    def _mount(*args: str, target: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", *args, str(target)], check=True)
        mounted.append(target)

    yield _mount
    for target in reversed(mounted):
        subprocess.run(["umount", "-l", str(target)], check=False)


def test_sigkill_mid_epoch_then_rerun_resumes_from_last_checkpoint(tmp_path, channels):
    base = jobs.make_job(tmp_path / "job", channels, {**MLP, "epochs": "4"})
    proc = jobs.start_train(base)
    # Let one epoch finish (a checkpoint), then die mid-way through the next, as an OOM kill would.
    seen_epoch = False
    for line in proc.stdout:
        seen_epoch = seen_epoch or line.startswith("epoch=1;")
        if seen_epoch and line.startswith("progress: epoch 2/4"):
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert seen_epoch
    code, out = _run(base)
    assert code == 0, out
    assert "resumed from epoch 1 step 0" in out, out
    assert "epoch=1;" not in out and "epoch=4;" in out
    assert jobs.metrics_json(base)["validation_accuracy"] > 0.85


def test_full_disk_for_the_model_gives_a_clear_reason(tmp_path, channels, mount):
    base = jobs.make_job(tmp_path / "job", channels, {**MLP, "epochs": "1"})
    mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", target=base / "model")
    code, out = _run(base)
    assert code == 1, out
    reason = _first_line(base)
    assert "cannot write the model to" in reason and "no space left on device" in reason.lower(), reason


def test_read_only_checkpoint_folder_fails_before_training(tmp_path, channels, mount):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    base = jobs.make_job(tmp_path / "job", channels, {**MLP, "epochs": "1"},
                           {"checkpointconfig.json": {"LocalPath": str(ckpt)}})
    mount("--bind", str(ckpt), target=ckpt)
    subprocess.run(["mount", "-o", "remount,ro,bind", str(ckpt)], check=True)
    code, out = _run(base)
    assert code == 1, out
    reason = _first_line(base)
    assert f"checkpoint directory {ckpt} cannot be written" in reason and "Read-only" in reason, reason
    assert "progress:" not in out and "epoch=" not in out  # not one step was trained


def test_one_bad_file_among_good_ones_is_named(tmp_path, channels):
    base = jobs.make_job(tmp_path / "job", channels, {**MLP, "epochs": "1"})
    (base / "input" / "data" / "training" / "part-0007.idx").write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 10)
    code, out = _run(base)
    assert code == 1, out
    reason = _first_line(base)
    assert "part-0007.idx" in reason and "truncated" in reason, reason
