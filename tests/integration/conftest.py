"""Real processes: a model trained by `container/train` (once per session) and `container/serve` servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from serve_process import ROOT, Server

from mxnet_byoc.serve import network
from mxnet_byoc.train import data

TRAIN = ROOT / "container" / "train"


@pytest.fixture(scope="session")
def trained_model_dir(tmp_path_factory, mnist_dir) -> Path:
    """`<base>/model` written by `container/train`: a 1-epoch MLP on MNIST (about 96% accurate)."""
    base = tmp_path_factory.mktemp("trained")
    channel = base / "input" / "data" / "training"
    channel.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (channel / name).symlink_to(mnist_dir / name)
    config = base / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps({"model": "mlp", "epochs": "1"}))
    result = subprocess.run([sys.executable, str(TRAIN)], env={**os.environ, "SAGEMAKER_BASE_DIR": str(base)},
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"container/train failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
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
    images = data.read_idx(mnist_dir / "t10k-images-idx3-ubyte.gz")[:500].reshape(500, 28, 28)
    labels = data.read_idx(mnist_dir / "t10k-labels-idx1-ubyte.gz")[:500]
    return images, labels


@pytest.fixture(scope="session")
def reference(trained_model_dir, digits) -> np.ndarray:
    """The same model's probabilities computed in this process through mxnet_byoc.serve.network."""
    model = network.load(trained_model_dir)
    try:
        return model.predict(digits[0].reshape(500, 1, 28, 28).astype(np.float32) / 255)
    finally:
        model.close()
