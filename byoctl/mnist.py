"""MNIST for the demo and the tests: the four IDX .gz files, from MNIST_DIR or downloaded from public
mirrors (or from those MNIST_MIRRORS names, such as a copy inside a firewall).

Every download is checked against the SHA-256 sums below before it takes its final name, so a
truncated transfer, a mirror serving an error page or a tampered file never reaches training.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

MNIST_DIR_ENV = "MNIST_DIR"
MNIST_MIRRORS_ENV = "MNIST_MIRRORS"  # base URLs separated by spaces, tried in their order

# The sums of the original files (every mirror below serves byte-identical copies).
SHA256 = {
    "train-images-idx3-ubyte.gz": "db8f937d487057fb14a9f0fbe97f0bc8d311ab41b750d41e1ff37c43b9e55e19",
    "train-labels-idx1-ubyte.gz": "51fc562b6747b666fbf6e84ce29d43c3cb5f9c388c664d43b33f02095313405a",
    "t10k-images-idx3-ubyte.gz": "cfeddb84311ecf044fc6a5b0f6ee8a24d265d4e83e388400186eb114082f4209",
    "t10k-labels-idx1-ubyte.gz": "e41c74e484045d39b462a7790a4af51301bd9b0b24f0154798d713ec68c45920",
}
FILES = tuple(SHA256)

# Tried in this order; the original site now often refuses downloads, so it comes last.
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

_CHUNK = 1 << 16


def configured_mirrors() -> tuple[str, ...]:
    """The base URLs in $MNIST_MIRRORS when it names any, else MIRRORS."""
    return tuple(os.environ.get(MNIST_MIRRORS_ENV, "").split()) or MIRRORS


class MnistError(Exception):
    """MNIST could not be found or fetched; the message names every folder or mirror tried and why."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_valid(path: Path, name: str) -> bool:
    return path.is_file() and sha256_of(path) == SHA256[name]


def download(
    target: Path,
    mirrors: Sequence[str] | None = None,
    timeout: float = 60.0,
    log: Callable[[str], None] = print,
) -> Path:
    """Fill `target` with the four files, skipping those already there and valid; returns `target`.
    `mirrors` defaults to configured_mirrors()."""
    target = Path(target)
    mirrors = configured_mirrors() if mirrors is None else mirrors
    target.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        path = target / name
        if is_valid(path, name):
            continue
        failures = []
        for base in mirrors:
            url = base.rstrip("/") + "/" + name
            try:
                _fetch(url, path, SHA256[name], timeout)
            except (OSError, http.client.HTTPException, ValueError) as e:
                failures.append(f"  {url}: {_reason(e)}")
                continue
            log(f"downloaded {name} from {url}")
            break
        else:
            tried = "\n".join(failures) or "  (no mirrors given)"
            raise MnistError(
                f"could not download {name} from any mirror:\n{tried}\n"
                f"Download the four MNIST .gz files yourself and set {MNIST_DIR_ENV} to their folder, "
                f"or set {MNIST_MIRRORS_ENV} to base URLs that serve them."
            )
    return target


def check_dir(folder: Path) -> Path:
    """`folder` if it holds the four files; a clear error naming the missing ones otherwise."""
    if not folder.is_dir():
        raise MnistError(f"{MNIST_DIR_ENV}={folder} is not a folder")
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise MnistError(f"{MNIST_DIR_ENV}={folder} lacks {', '.join(missing)}")
    return folder


def _fetch(url: str, path: Path, sha256: str, timeout: float) -> None:
    # Written beside its final name and renamed only once verified, so `path` is always whole or absent.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != sha256:
            raise ValueError(f"checksum mismatch (sha256 {digest.hexdigest()}, expected {sha256})")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _reason(e: Exception) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        return str(e.reason)
    return str(e) or type(e).__name__
