"""Helpers for the container tests: running containers, a `serve` container, an /opt/ml job folder.

Fixtures live in conftest.py beside this file; tests import them as `dockerkit` (pytest puts this folder on sys.path).
"""


from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
LOGS = ROOT / "build" / "test-logs"
CPU_IMAGE = os.environ.get("CPU_IMAGE", "mxnet-byoc:cpu")
GPU_IMAGE = os.environ.get("GPU_IMAGE", "mxnet-byoc:gpu")
# Where the NVIDIA container runtime puts the driver's library; the GPU tests mount the stand-in there.
LIBCUDA_IN_IMAGE = "/usr/lib/x86_64-linux-gnu/libcuda.so.1"
MNIST_FILES = {
    "training": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def sh(*cmd: str | Path, timeout: float = 120, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run a command, capture its output, and fail the test with that output when it fails."""
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} exited {result.returncode}:\n{result.stdout[-3000:]}\n"
                    f"{result.stderr[-3000:]}")
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_idx_gz(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def make_job(base: Path, mnist_dir: Path, hyperparameters: dict[str, str],
             channels: tuple[str, ...] = ("training", "test")) -> Path:
    """/opt/ml as SageMaker lays it out for a one-host File-mode job on MNIST."""
    config = base / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    (config / "inputdataconfig.json").write_text(json.dumps({
        name: {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated",
               "RecordWrapperType": "None"} for name in channels}))
    (config / "resourceconfig.json").write_text(json.dumps(
        {"current_host": "algo-1", "hosts": ["algo-1"], "network_interface_name": "eth0"}))
    for name in channels:
        folder = base / "input" / "data" / name
        folder.mkdir(parents=True)
        for file in MNIST_FILES[name]:
            shutil.copy(mnist_dir / file, folder / file)
    return base


@dataclass
class Finished:
    returncode: int
    log: str
    seconds: float


def docker_run(image: str, *args: str, mounts: dict[Path, str] | None = None, env: dict[str, str] | None = None,
               timeout: float = 900, extra: tuple[str, ...] = ()) -> Finished:
    """`docker run --rm --network host` to completion; the container is removed even on a timeout."""
    name = f"mxnet-byoc-test-{uuid.uuid4().hex[:12]}"
    cmd = ["docker", "run", "--rm", "--name", name, "--network", "host", *extra]
    for host, inside in (mounts or {}).items():
        cmd += ["-v", f"{host}:{inside}"]
    for key, value in (env or {}).items():
        cmd += ["-e", f"{key}={value}"]
    started = time.monotonic()
    try:
        result = subprocess.run([*cmd, image, *args], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
        raise
    return Finished(result.returncode, result.stdout + result.stderr, time.monotonic() - started)


class Server:
    """A detached `serve` container on the host network, on a port of its own."""

    def __init__(self, image: str, model_dir: Path, user: str | None = None, env: dict[str, str] | None = None,
                 mounts: dict[Path, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.name = f"mxnet-byoc-serve-{uuid.uuid4().hex[:12]}"
        cmd = ["docker", "run", "-d", "--name", self.name, "--network", "host",
               "-e", f"SAGEMAKER_BIND_TO_PORT={self.port}", "-v", f"{model_dir}:/opt/ml/model:ro"]
        if user:
            cmd += ["--user", user]
        for key, value in (env or {}).items():
            cmd += ["-e", f"{key}={value}"]
        for host, inside in (mounts or {}).items():
            cmd += ["-v", f"{host}:{inside}"]
        sh(*cmd, image, "serve")

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.state()["Status"] != "running":
                pytest.fail(f"serve exited early:\n{self.logs()}")
            try:
                r = requests.get(f"{self.url}/ping", timeout=2)
                if r.status_code == 200:
                    return
                last = f"{r.status_code} {r.text[:200]}"
            except requests.RequestException as e:
                last = str(e)
            time.sleep(0.5)
        pytest.fail(f"/ping not 200 after {timeout} s ({last}):\n{self.logs()}")

    def state(self) -> dict:
        return json.loads(sh("docker", "inspect", "--format", "{{json .State}}", self.name).stdout)

    def logs(self) -> str:
        r = sh("docker", "logs", self.name, check=False)
        return (r.stdout + r.stderr)[-5000:]

    def remove(self) -> None:
        subprocess.run(["docker", "rm", "-f", self.name], capture_output=True)


@contextlib.contextmanager
def serving(image: str, model_dir: Path, user: str | None = None, env: dict[str, str] | None = None,
            mounts: dict[Path, str] | None = None) -> Iterator[Server]:
    server = Server(image, model_dir, user, env, mounts)
    try:
        server.wait_ready()
        yield server
    finally:
        server.remove()


@dataclass
class TrainedJob:
    base: Path
    run: Finished

    @property
    def model_dir(self) -> Path:
        return self.base / "model"

    @property
    def metrics(self) -> dict:
        return json.loads((self.base / "output" / "data" / "metrics.json").read_text())
