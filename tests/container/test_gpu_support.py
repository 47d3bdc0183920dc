"""The GPU image on GPUs it can and cannot run on, simulated: the driver stand-in of
`scripts/fetch-libcuda-standin.sh --devices` reports the GPUs LIBCUDA_STANDIN_DEVICES names (an H100,
compute capability 9.0, which the image's MXNet build has no code for; an A100, 8.0, which it has) and is
Debian's driver without a GPU for everything else, so MXNet itself still sees no GPU and runs on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devkit.docker import docker_run
from devkit.jobs import make_job
from devkit.project import SCRIPTS
from devkit.servers import serving
from devkit.shell import sh
from mxnet_byoc import gpus

pytestmark = [pytest.mark.container, pytest.mark.slow]

LIBRARIES_IN_IMAGE = Path("/usr/lib/x86_64-linux-gnu")
H100 = {"LIBCUDA_STANDIN_DEVICES": "NVIDIA H100 80GB HBM3=9.0"}
A100 = {"LIBCUDA_STANDIN_DEVICES": "NVIDIA A100-SXM4-40GB=8.0"}
REFUSED = "this GPU image's MXNet build cannot run on NVIDIA H100 80GB HBM3 (compute capability 9.0)"


@pytest.fixture(scope="module")
def driver() -> dict[Path, str]:
    """The stand-in and Debian's library it hands the rest to, as mounts into the image's library folder."""
    folder = Path(sh(SCRIPTS / "fetch-libcuda-standin.sh", "--devices", timeout=600).stdout.strip().splitlines()[-1])
    return {folder / name: f"{LIBRARIES_IN_IMAGE / name}:ro" for name in ("libcuda.so.1", "libcuda-debian.so.1")}


@pytest.fixture(scope="module")
def trained_on_a100(gpu_image: str, driver, mnist_dir: Path, tmp_path_factory) -> Path:
    """`train` with an A100 visible: the check passes and the job trains (on the CPU: MXNet sees no GPU)."""
    base = make_job(tmp_path_factory.mktemp("opt-ml"), mnist_dir, {"model": "mlp", "epochs": "1"},
                    sagemaker_config=True, link=True)
    run = docker_run(gpu_image, "train", mounts={base: "/opt/ml", **driver}, env=A100)
    assert run.returncode == 0, run.log[-4000:]
    assert ("GPU check: 1 GPU(s), each runs this image's MXNet build (SASS for sm_50, sm_60, sm_70, sm_80, sm_86 "
            "and no PTX): NVIDIA A100-SXM4-40GB (compute capability 8.0)") in run.log, run.log[-4000:]
    return base


def test_the_image_records_what_its_libmxnet_carries(gpu_image: str):
    record = json.loads(sh("docker", "run", "--rm", "--network", "none", gpu_image,
                           "cat", str(gpus.RECORD)).stdout)
    print(record)
    assert record["library"].endswith("/site-packages/mxnet/libmxnet.so") and record["fatbins"] > 0
    # byoctl's warnings assume the pinned build; a new MXNet build in the lock updates PINNED_BUILD too.
    assert gpus.Archs.from_record(record) == gpus.PINNED_BUILD


def test_train_on_an_h100_fails_at_once_with_the_reason(gpu_image: str, driver, mnist_dir: Path, tmp_path: Path):
    base = make_job(tmp_path / "opt-ml", mnist_dir, {"model": "mlp", "epochs": "1"}, sagemaker_config=True,
                    link=True)
    run = docker_run(gpu_image, "train", mounts={base: "/opt/ml", **driver}, env=H100, timeout=120)
    print(f"train on an H100: exit {run.returncode} after {run.seconds:.1f} s")
    assert run.returncode == 1, run.log[-4000:]
    failure = (base / "output" / "failure").read_text()
    assert failure.startswith(REFUSED), failure
    assert "not ml.p5 (H100), ml.p5e/p5en (H200)" in failure.splitlines()[0]
    assert "training mlp on" not in run.log  # stopped before any data was read
    assert not list((base / "model").glob("*"))


def test_script_mode_on_an_h100_fails_before_the_script_runs(gpu_image: str, driver, tmp_path: Path):
    base = make_job(tmp_path / "opt-ml", tmp_path, {"sagemaker_program": "train.py",
                                                    "sagemaker_submit_directory": "/opt/ml/code"}, channels=())
    (base / "code").mkdir()
    (base / "code" / "train.py").write_text("open('/opt/ml/model/ran', 'w').close()\n")
    run = docker_run(gpu_image, "train", mounts={base: "/opt/ml", **driver}, env=H100, timeout=120)
    assert run.returncode == 1, run.log[-4000:]
    assert (base / "output" / "failure").read_text().startswith(REFUSED)
    assert not (base / "model" / "ran").exists()


def test_train_on_an_a100_proceeds(trained_on_a100: Path):
    assert (trained_on_a100 / "model" / "model-0000.params").is_file()
    assert not (trained_on_a100 / "output" / "failure").exists()


def test_serve_on_an_h100_exits_with_the_reason(gpu_image: str, driver, trained_on_a100: Path):
    run = docker_run(gpu_image, "serve", mounts={trained_on_a100 / "model": "/opt/ml/model:ro", **driver},
                     env=H100, timeout=120)
    print(f"serve on an H100: exit {run.returncode} after {run.seconds:.1f} s")
    assert run.returncode == 2, run.log[-4000:]
    assert f"serve: {REFUSED}" in run.log, run.log[-4000:]
    assert "Booting worker" not in run.log and "Listening at" not in run.log


def test_serve_on_an_a100_answers_ping(gpu_image: str, driver, trained_on_a100: Path):
    with serving(gpu_image, trained_on_a100 / "model", env=A100, mounts=driver) as server:
        assert "GPU check: 1 GPU(s), each runs this image's MXNet build" in server.output()


def test_the_override_lets_serve_try_an_h100(gpu_image: str, driver, trained_on_a100: Path):
    env = {**H100, gpus.ALLOW_VARIABLE: "1"}
    with serving(gpu_image, trained_on_a100 / "model", env=env, mounts=driver) as server:
        assert (f"GPU check: {gpus.ALLOW_VARIABLE} is set, so going on although {REFUSED}"
                in server.output()), server.output()[-4000:]
