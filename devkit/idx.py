"""IDX files (MNIST's format): written here, read by the image's own reader (mxnet_byoc.train.data.read_idx,
numpy only); MNIST's arrays and subsets of them as channel folders."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from mxnet_byoc.train.data import IDX_TYPES, read_idx

__all__ = ["MNIST_FILES", "idx_bytes", "mnist_arrays", "read_idx", "write_idx", "write_subsets"]

# SageMaker channel -> MNIST's image and label files for it.
MNIST_FILES = {
    "training": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def idx_bytes(array: np.ndarray) -> bytes:
    """`array` as an IDX file: any of the format's types (u8, i8, i16, i32, f32, f64), stored big-endian."""
    array = np.asarray(array)
    for code, dtype in IDX_TYPES.items():
        if (array.dtype.kind, array.dtype.itemsize) == (dtype.kind, dtype.itemsize):
            header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
            return header + array.astype(dtype, copy=False).tobytes()
    raise ValueError(f"IDX has no type for {array.dtype}")


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    """`array` written to `path` as IDX (gzip-compressed when `gz`), its folder made if need be."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = idx_bytes(array)
    path.write_bytes(gzip.compress(raw, compresslevel=1) if gz else raw)
    return path


def mnist_arrays(mnist_dir: Path, channel: str = "test", count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The first `count` (default all) images (N, 28, 28) uint8 and labels (N,) of MNIST's `channel`."""
    images, labels = MNIST_FILES[channel]
    return read_idx(Path(mnist_dir) / images)[:count], read_idx(Path(mnist_dir) / labels)[:count]


def write_subsets(mnist_dir: Path, root: Path, n_train: int, n_test: int) -> Path:
    """`root`/training and `root`/test channel folders holding the first records of the real MNIST
    (images.idx and labels.idx in each); returns `root`."""
    for channel, count in (("training", n_train), ("test", n_test)):
        images, labels = mnist_arrays(mnist_dir, channel, count)
        write_idx(Path(root) / channel / "images.idx", images)
        write_idx(Path(root) / channel / "labels.idx", labels)
    return Path(root)
