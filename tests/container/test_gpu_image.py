"""The GPU image on a machine without a GPU: its libraries resolve, MXNet imports with a stand-in for the
driver's libcuda.so.1 and counts no GPU, and `train` falls back to the CPU with a warning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devkit.docker import docker_run
from devkit.jobs import make_job
from devkit.shell import sh

pytestmark = [pytest.mark.container, pytest.mark.slow]

SITE = "/opt/venv/lib/python3.11/site-packages"
# Where the NVIDIA container runtime puts the driver's library; the tests mount the stand-in there.
LIBCUDA_IN_IMAGE = "/usr/lib/x86_64-linux-gnu/libcuda.so.1"


def test_every_cuda_library_resolves_but_the_driver(gpu_image: str) -> None:
    out = sh("docker", "run", "--rm", "--network", "none", gpu_image, "ldd", f"{SITE}/mxnet/libmxnet.so").stdout
    print(out)
    missing = sorted(line.split()[0] for line in out.splitlines() if "not found" in line)
    assert missing == ["libcuda.so.1"], out  # the driver's library comes from the host at run time
    for lib in ("libcudart.so.11.0", "libcublas.so.11", "libcufft.so.10", "libcusolver.so.11",
                "libcurand.so.10", "libnvrtc.so.11.2", "libnvToolsExt.so.1", "libcudnn.so.8", "libnccl.so.2"):
        assert f"{lib} => {SITE}/nvidia/" in out, lib


def test_mxnet_imports_with_the_driver_stand_in_and_sees_no_gpu(gpu_image: str, libcuda_standin: Path) -> None:
    probe = ("import json, mxnet as mx; f = mx.runtime.Features(); print(json.dumps({'version': mx.__version__, "
             "'cuda': f.is_enabled('CUDA'), 'cudnn': f.is_enabled('CUDNN'), 'nccl': f.is_enabled('NCCL'), "
             "'gpus': mx.context.num_gpus(), 'sum': float((mx.nd.ones((2, 2)) * 2).sum().asscalar())}))")
    out = sh("docker", "run", "--rm", "--network", "none", "-v", f"{libcuda_standin}:{LIBCUDA_IN_IMAGE}:ro",
             gpu_image, "python3", "-c", probe).stdout
    assert json.loads(out.splitlines()[-1]) == {
        "version": "1.9.1", "cuda": True, "cudnn": True, "nccl": True, "gpus": 0, "sum": 8.0}


def test_train_falls_back_to_the_cpu_with_a_warning(gpu_image: str, libcuda_standin: Path, mnist_dir: Path,
                                                    tmp_path: Path) -> None:
    base = make_job(tmp_path / "opt-ml", mnist_dir, {"model": "mlp", "epochs": "1"}, sagemaker_config=True)
    run = docker_run(gpu_image, "train", mounts={base: "/opt/ml", libcuda_standin: f"{LIBCUDA_IN_IMAGE}:ro"})
    assert run.returncode == 0, run.log[-4000:]
    assert "no GPU is visible: training on the CPU" in run.log, run.log[-4000:]
    metrics = json.loads((base / "output" / "data" / "metrics.json").read_text())
    assert metrics["validation_accuracy"] > 0.9, metrics
    assert (base / "model" / "model-0000.params").is_file()


def test_train_without_a_driver_fails_with_a_reason(gpu_image: str, mnist_dir: Path, tmp_path: Path) -> None:
    """No libcuda.so.1 at all (a CPU instance, or docker run without the NVIDIA runtime): a clear failure."""
    base = make_job(tmp_path / "opt-ml", mnist_dir, {"model": "mlp", "epochs": "1"}, sagemaker_config=True)
    run = docker_run(gpu_image, "train", mounts={base: "/opt/ml"})
    assert run.returncode != 0, run.log[-4000:]
    failure = (base / "output" / "failure").read_text()
    assert "libcuda.so.1" in failure, failure
