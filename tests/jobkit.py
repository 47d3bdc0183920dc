"""Building SageMaker-like job folders for tests and running the real `container/train` in them."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "container" / "train"
VENV_BIN = ROOT / ".venv" / "bin"


def read_mnist(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(raw, compresslevel=1) if gz else raw)


def write_subsets(mnist_dir: Path, root: Path, n_train: int, n_test: int) -> Path:
    """training/ and test/ channel folders holding the first records of the real MNIST."""
    for channel, prefix, n in (("training", "train", n_train), ("test", "t10k", n_test)):
        write_idx(root / channel / "images.idx", read_mnist(mnist_dir / f"{prefix}-images-idx3-ubyte.gz")[:n])
        write_idx(root / channel / "labels.idx", read_mnist(mnist_dir / f"{prefix}-labels-idx1-ubyte.gz")[:n])
    return root


def make_job(base: Path, channels_from: Path, hyperparameters: dict | None = None,
             config: dict | None = None, channels=("training", "test")) -> Path:
    (base / "input" / "config").mkdir(parents=True, exist_ok=True)
    (base / "input" / "config" / "hyperparameters.json").write_text(json.dumps(hyperparameters or {}))
    for name, content in (config or {}).items():
        (base / "input" / "config" / name).write_text(json.dumps(content))
    for name in channels:
        shutil.copytree(channels_from / name, base / "input" / "data" / name)
    return base


def train_env(base: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "SAGEMAKER_BASE_DIR": str(base), "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
            "PYTHONUNBUFFERED": "1", **extra}


def start_train(base: Path, **extra: str) -> subprocess.Popen:
    return subprocess.Popen([str(TRAIN)], env=train_env(base, **extra), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def metrics_json(base: Path) -> dict:
    return json.loads((base / "output" / "data" / "metrics.json").read_text())
