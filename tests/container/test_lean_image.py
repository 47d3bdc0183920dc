"""`make image-cpu-lean`: the CPU image without Horovod, MPI, SSH and the libraries for users' scripts, for the
built-in model and serving. It is the first stages of Dockerfile.cpu, so the default image is it plus layers
on top; it trains the built-in model, and an MPI job in it fails with a reason that says which image to use."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from devkit.docker import docker_run
from devkit.jobs import make_job
from devkit.project import ROOT
from devkit.shell import sh
from tests.container.conftest import _build

pytestmark = pytest.mark.container

LEAN_IMAGE = os.environ.get("CPU_LEAN_IMAGE") or "mxnet-byoc:cpu-lean"


@pytest.fixture(scope="module")
def lean_image(docker_engine) -> str:
    return _build("image-cpu-lean", LEAN_IMAGE)


def _inspect(image: str) -> dict:
    return json.loads(sh("docker", "image", "inspect", image).stdout)[0]


def test_the_default_image_is_the_lean_one_plus_layers(lean_image, cpu_image):
    # Both from the same working tree, one right after the other (cache hits when nothing changed since).
    lean, full = _inspect(_build("image-cpu-lean", lean_image)), _inspect(_build("image-cpu", cpu_image))
    lean_layers, full_layers = lean["RootFS"]["Layers"], full["RootFS"]["Layers"]
    assert full_layers[:len(lean_layers)] == lean_layers and len(full_layers) > len(lean_layers)
    print(f"image sizes: lean {lean['Size'] / 1e6:.0f} MB, full {full['Size'] / 1e6:.0f} MB")
    assert lean["Config"]["Cmd"] == full["Config"]["Cmd"] == ["train"]


def test_the_lean_image_holds_only_its_lock_and_no_mpi(lean_image):
    out = sh("docker", "run", "--rm", "--network", "none", lean_image, "sh", "-c",
             "cat /opt/program/PACKAGES.txt; echo ---; for t in mpirun sshd horovodrun aws; do command -v $t; done; "
             "ls /usr/sbin/sshd 2>/dev/null; exit 0").stdout
    packages, programs = out.split("---\n")
    installed = {re.sub(r"[-_.]+", "-", n).lower(): v for n, v in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)$", packages,
                                                                            re.M)}
    lock = (ROOT / "docker" / "requirements-cpu.lock").read_text()
    locked = {re.sub(r"[-_.]+", "-", n).lower(): v for n, v in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", lock, re.M)}
    assert installed == locked
    assert programs.strip() == "", programs


def test_the_lean_image_trains_the_builtin_model(lean_image, mnist_dir, tmp_path):
    base = make_job(tmp_path / "opt-ml", mnist_dir, {"model": "mlp", "epochs": "1"}, sagemaker_config=True,
                    link=True)
    run = docker_run(lean_image, "train", mounts={base: "/opt/ml"})
    assert run.returncode == 0, run.log[-4000:]
    assert json.loads((base / "output" / "data" / "metrics.json").read_text())["validation_accuracy"] > 0.9


def test_an_mpi_job_in_the_lean_image_says_which_image_to_use(lean_image, tmp_path: Path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "train.py").write_text("print('never')\n")
    config = tmp_path / "ml" / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps({
        "sagemaker_program": '"train.py"', "sagemaker_submit_directory": '"/opt/ml/code"',
        "sagemaker_mpi_enabled": "true", "sagemaker_mpi_num_of_processes_per_host": "2"}))
    run = docker_run(lean_image, "train", mounts={tmp_path / "ml": "/opt/ml", code: "/opt/ml/code"})
    assert run.returncode == 1, run.log[-3000:]
    assert (tmp_path / "ml" / "output" / "failure").read_text().startswith(
        "mpirun is not in this image: MPI jobs need the full image (not image-cpu-lean)")
    assert "never" not in run.log
