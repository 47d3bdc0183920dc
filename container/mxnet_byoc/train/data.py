"""Channel readers: IDX files (MNIST's format) and image folders, into arrays held in memory once.

Files are recognised by content, not by name: an IDX file starts with two zero bytes, a type code and the
number of dimensions (gzip-compressed or not). Image files (ndim >= 3) pair with label files (ndim 1) by
record count. Only numpy (and Pillow for image folders): no MXNet.
"""

from __future__ import annotations

import gzip
import logging
import os
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ReasonError

log = logging.getLogger(__name__)

IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# Files SageMaker users often keep beside their data; anything else at a channel's top level must be IDX.
IGNORED_SUFFIXES = (".md", ".txt", ".json", ".csv", ".sums")
IGNORED_NAME_ENDINGS = ("sums",)  # SHA256SUMS, MD5SUMS: checksum lists have no suffix


class DataError(ReasonError):
    """A channel's content cannot be used; the message names the channel or file and what is wrong."""


@dataclass
class Dataset:
    images: np.ndarray  # (N, C, H, W) uint8
    labels: np.ndarray  # (N,) int32, indices into classes
    classes: list[Any]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as e:
            raise DataError(f"{path.name}: gzip data is corrupt or truncated ({e})") from e
    return raw


def read_idx(path: Path) -> np.ndarray:
    """One IDX file as an array of its declared shape; DataError when the header or length is wrong."""
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_TYPES or raw[3] == 0:
        raise DataError(
            f"{path.name}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'}; "
            "expected 0000 followed by a type code 08/09/0b/0c/0d/0e and the number of dimensions)"
        )
    dtype, ndim = IDX_TYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path.name}: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path.name}: IDX data has {len(raw) - header} bytes but its header {dims} needs {expected} "
            "(truncated or corrupt file)"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def _idx_files(channel_dir: Path) -> list[Path]:
    files = []
    for path in sorted(channel_dir.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if path.suffix.lower() in IGNORED_SUFFIXES or path.name.lower().endswith(IGNORED_NAME_ENDINGS):
            continue
        files.append(path)
    return files


def _as_images(array: np.ndarray, name: str) -> np.ndarray:
    if array.ndim == 3:  # (N, H, W): grey
        array = array[:, None, :, :]
    elif array.ndim == 4:  # (N, H, W, C): channels last, as IDX writers store them
        array = array.transpose(0, 3, 1, 2)
    else:
        raise DataError(f"{name}: {array.ndim}-dimensional IDX data is neither images nor labels")
    if array.dtype != np.uint8:
        # Float or wider IDX images: values are taken as 0-255 if any exceeds 1, else as 0-1.
        a = array.astype(np.float32)
        if a.size and a.max() <= 1.0:
            a = a * 255.0
        array = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(array)


def _pair(images: list[tuple[Path, np.ndarray]], labels: list[tuple[Path, np.ndarray]], where: str):
    if not images:
        raise DataError(f"{where}: no IDX image file (3 or 4 dimensions) among the label files")
    if not labels:
        raise DataError(f"{where}: no IDX label file (1 dimension) beside the image files")
    pairs = []
    free = list(labels)
    for ipath, iarr in images:
        matches = [(lp, la) for lp, la in free if len(la) == len(iarr)]
        if not matches:
            counts = ", ".join(f"{p.name}: {len(a)}" for p, a in labels)
            raise DataError(
                f"{where}: {ipath.name} holds {len(iarr)} images but no label file has as many records "
                f"(labels: {counts})"
            )
        # Several candidates: the one whose name shares the longest prefix (train-images/train-labels).
        lpath, larr = max(matches, key=lambda m, name=ipath.name: len(os.path.commonprefix([m[0].name, name])))
        free.remove((lpath, larr))
        pairs.append((ipath, iarr, lpath, larr))
    if free:
        raise DataError(f"{where}: label file {free[0][0].name} has no image file with as many records")
    return pairs


def _read_idx_channel(files: list[Path], where: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for path in files:
        array = read_idx(path)
        (labels if array.ndim == 1 else images).append((path, array))
    parts_x, parts_y = [], []
    shapes = set()
    for ipath, iarr, lpath, larr in _pair(images, labels, where):
        x = _as_images(iarr, ipath.name)
        shapes.add(x.shape[1:])
        if not np.issubdtype(larr.dtype, np.integer) or (len(larr) and larr.min() < 0):
            raise DataError(f"{lpath.name}: labels must be non-negative integers")
        parts_x.append(x)
        parts_y.append(larr.astype(np.int32))
        log.info("read %d images %s from %s with labels from %s", len(x), x.shape[1:], ipath.name, lpath.name)
    if len(shapes) > 1:
        raise DataError(f"{where}: image files differ in shape {sorted(shapes)}")
    return np.concatenate(parts_x), np.concatenate(parts_y)


def _class_key(name: str) -> Any:
    return int(name) if name.isdigit() else name


def _read_folders(channel_dir: Path, where: str) -> tuple[np.ndarray, list[Any]]:
    from PIL import Image, UnidentifiedImageError

    folders = sorted((d for d in channel_dir.iterdir() if d.is_dir() and not d.name.startswith(".")),
                     key=lambda d: (not d.name.isdigit(), _class_key(d.name) if d.name.isdigit() else 0, d.name))
    samples: list[tuple[np.ndarray, str]] = []
    for folder in folders:
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES or path.name.startswith("."):
                continue
            try:
                with Image.open(path) as img:
                    samples.append((np.asarray(img.convert("L")), folder.name))
            except (UnidentifiedImageError, OSError) as e:
                raise DataError(f"{where}: {folder.name}/{path.name} is not a readable image ({e})") from e
    if not samples:
        raise DataError(f"{where}: no .png/.jpg images under <label>/ folders")
    size = Counter(a.shape for a, _ in samples).most_common(1)[0][0]
    resized = 0
    arrays = []
    for a, _ in samples:
        if a.shape != size:
            a = np.asarray(Image.fromarray(a).resize((size[1], size[0]), Image.BILINEAR))
            resized += 1
        arrays.append(a)
    if resized:
        log.warning("%s: %d images resized to %dx%d, the most common size", where, resized, size[1], size[0])
    names = [name for _, name in samples]
    return np.stack(arrays)[:, None, :, :], names


def read_channel(channel_dir: Path, classes: list[Any] | None = None) -> Dataset:
    """Read a channel folder. `classes` (from the training channel) fixes the label order of a test channel."""
    channel_dir = Path(channel_dir)
    where = f"channel {channel_dir.name!r}"
    if not channel_dir.is_dir():
        raise DataError(f"{where}: {channel_dir} does not exist")
    files = _idx_files(channel_dir)
    has_folders = any(d.is_dir() and not d.name.startswith(".") for d in channel_dir.iterdir())
    if files:
        x, y = _read_idx_channel(files, where)
        if classes is None:
            classes = list(range(int(y.max()) + 1))
        elif len(y) and int(y.max()) >= len(classes):
            raise DataError(f"{where}: label {int(y.max())} is outside the training data's {len(classes)} classes")
        return Dataset(x, y, classes)
    if has_folders:
        x, names = _read_folders(channel_dir, where)
        if classes is None:
            found = sorted(set(names), key=lambda n: (not n.isdigit(), _class_key(n) if n.isdigit() else 0, n))
            classes = [_class_key(n) for n in found]
        index = {str(c): i for i, c in enumerate(classes)}
        unknown = sorted(set(names) - set(index))
        if unknown:
            raise DataError(f"{where}: classes {unknown} do not occur in the training channel")
        y = np.array([index[n] for n in names], dtype=np.int32)
        return Dataset(x, y, classes)
    raise DataError(f"{where} is empty: expected IDX files (MNIST format, .gz or not) or <label>/*.png folders")


def split(data: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Hold out `fraction` of the records, chosen by a seeded permutation (the same on every host)."""
    n = len(data)
    n_val = max(1, int(round(n * fraction)))
    if n_val >= n:
        raise DataError(f"cannot hold out {fraction:.0%} of {n} records for validation and still train")
    order = np.random.RandomState(seed).permutation(n)
    val, train = order[:n_val], order[n_val:]
    return (Dataset(data.images[train], data.labels[train], data.classes),
            Dataset(data.images[val], data.labels[val], data.classes))


def shard(data: Dataset, rank: int, count: int, seed: int) -> Dataset:
    """Host `rank`'s share of a FullyReplicated channel: every `count`-th record of a seeded permutation
    (files such as MNIST's are ordered by writer, so plain strides give shards of unequal difficulty)."""
    if count <= 1:
        return data
    part = np.sort(np.random.RandomState(seed).permutation(len(data))[rank::count])
    return Dataset(data.images[part], data.labels[part], data.classes)


def shifted(images: np.ndarray, rng: np.random.RandomState, max_shift: int = 2) -> np.ndarray:
    """Every image moved by its own whole-pixel offset in [-max_shift, max_shift], zeros shifted in.

    One slice assignment per offset pair (25 for 2 pixels), not per image: about 0.1 s for MNIST.
    """
    n, _, h, w = images.shape
    out = np.zeros_like(images)
    dy = rng.randint(-max_shift, max_shift + 1, n)
    dx = rng.randint(-max_shift, max_shift + 1, n)
    for sy in range(-max_shift, max_shift + 1):
        for sx in range(-max_shift, max_shift + 1):
            idx = np.flatnonzero((dy == sy) & (dx == sx))
            if idx.size:
                out[idx, :, max(sy, 0):h + min(sy, 0), max(sx, 0):w + min(sx, 0)] = \
                    images[idx, :, max(-sy, 0):h + min(-sy, 0), max(-sx, 0):w + min(-sx, 0)]
    return out
