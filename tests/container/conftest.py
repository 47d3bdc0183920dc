"""Real Docker: the engine, the images and the MNIST training run that the container tests share.

`pytest tests/container` works on its own: the engine is started by scripts/ensure-docker.sh when none
answers, and each image is (re)built through `make image-cpu` / `make image-gpu`, a few seconds when
Docker's cache holds it already, so the tests always run the code in the working tree.
CPU_IMAGE and GPU_IMAGE name other tags (the Makefile passes its own).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from devkit.docker import CPU_IMAGE, GPU_IMAGE, docker_run
from devkit.jobs import TrainedJob, make_job
from devkit.project import LOGS, ROOT, SCRIPTS
from devkit.shell import sh


@pytest.fixture(scope="session")
def docker_engine() -> None:
    sh(SCRIPTS / "ensure-docker.sh", timeout=600)


def _build(target: str, image: str) -> str:
    LOGS.mkdir(parents=True, exist_ok=True)
    log = LOGS / f"{target}.log"
    started = time.monotonic()
    with open(log, "w") as f:
        result = subprocess.run(["make", "-C", str(ROOT), target, f"CPU_IMAGE={CPU_IMAGE}",
                                 f"GPU_IMAGE={GPU_IMAGE}"], stdout=f, stderr=subprocess.STDOUT, timeout=3600)
    if result.returncode != 0:
        pytest.fail(f"make {target} failed (log: {log}):\n{log.read_text()[-4000:]}")
    print(f"make {target}: {time.monotonic() - started:.1f} s")
    return image


@pytest.fixture(scope="session")
def cpu_image(docker_engine) -> str:
    return _build("image-cpu", CPU_IMAGE)


@pytest.fixture(scope="session")
def gpu_image(docker_engine) -> str:
    return _build("image-gpu", GPU_IMAGE)


@pytest.fixture(scope="session")
def libcuda_standin() -> Path:
    """Debian's libcuda.so.1 (the driver's library, no GPU behind it), for the GPU image's tests only."""
    path = Path(sh(SCRIPTS / "fetch-libcuda-standin.sh", timeout=600).stdout.strip().splitlines()[-1])
    assert path.is_file(), path
    return path


@pytest.fixture(scope="session")
def cpu_trained(cpu_image: str, mnist_dir: Path, tmp_path_factory) -> TrainedJob:
    """`docker run -v <tmp>:/opt/ml IMAGE train` on full MNIST: 2 epochs of the CNN (about 99%)."""
    base = make_job(tmp_path_factory.mktemp("opt-ml"), mnist_dir, {"model": "cnn", "epochs": "2"},
                    sagemaker_config=True)
    run = docker_run(cpu_image, "train", mounts={base: "/opt/ml"})
    LOGS.mkdir(parents=True, exist_ok=True)
    (LOGS / "train-cpu.log").write_text(run.log)
    print(f"train in the CPU image: {run.seconds:.1f} s (log: {LOGS / 'train-cpu.log'})")
    job = TrainedJob(base, run)
    if run.returncode != 0:
        pytest.fail(f"train exited {run.returncode}: {job.failure}\n{run.log[-4000:]}")
    return job
