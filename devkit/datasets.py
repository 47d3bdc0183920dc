"""MNIST for tests and benches: $MNIST_DIR when set, else the copy beside the checkout, else a download.

The download is byoctl.mnist's, as `make demo` uses it: every file is checked against its SHA-256 before it
takes its name, and files already in the cache and valid are not fetched again.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from byoctl import mnist

from . import project


def find_mnist(shared: Path = project.SHARED_MNIST, cache: Path = project.MNIST_CACHE,
               mirrors: Sequence[str] | None = None, log: Callable[[str], None] = print) -> Path:
    """The folder holding MNIST's four files: $MNIST_DIR when set (it must hold them; never written to),
    else `shared` when it holds them, else `cache`, downloaded from `mirrors` (default: $MNIST_MIRRORS,
    else the public ones) as need be.
    byoctl.mnist.MnistError says what was tried when none works."""
    given = os.environ.get(mnist.MNIST_DIR_ENV)
    if given:
        return mnist.check_dir(Path(given))
    if all((shared / name).is_file() for name in mnist.FILES):
        return shared
    log(f"MNIST is not in {shared} and {mnist.MNIST_DIR_ENV} is not set: using {cache}, downloading what it lacks")
    return mnist.download(cache, mirrors, log=log)
