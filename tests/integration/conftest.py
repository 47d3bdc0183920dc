"""Real processes: a model trained by `container/train` (once per session) and `container/serve` servers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from devkit import idx, jobs
from devkit.servers import Server
from mxnet_byoc.serve import network


@pytest.fixture(scope="session")
def trained_model_dir(tmp_path_factory, mnist_dir) -> Path:
    """`<base>/model` written by `container/train`: a 1-epoch MLP on MNIST (about 96% accurate)."""
    base = jobs.make_job(tmp_path_factory.mktemp("trained"), mnist_dir, {"model": "mlp", "epochs": "1"},
                         channels=("training",), link=True)
    run = jobs.run_train(base)
    assert run.returncode == 0, f"container/train failed:\n{run.log[-6000:]}"
    return base / "model"


@pytest.fixture
def start_server(tmp_path) -> Iterator:
    """Starts servers for one test and stops every one of them afterwards, whatever happened."""
    servers: list[Server] = []

    def start(base: Path, **env: str) -> Server:
        server = Server(base, tmp_path / f"serve-{len(servers)}.log", **env)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def digits(mnist_dir) -> tuple[np.ndarray, np.ndarray]:
    """The first 500 MNIST test images, uint8 (500, 28, 28), and their labels."""
    return idx.mnist_arrays(mnist_dir, "test", 500)


@pytest.fixture(scope="session")
def reference(trained_model_dir, digits) -> np.ndarray:
    """The same model's probabilities computed in this process through mxnet_byoc.serve.network."""
    model = network.load(trained_model_dir)
    try:
        return model.predict(digits[0].reshape(500, 1, 28, 28).astype(np.float32) / 255)
    finally:
        model.close()
