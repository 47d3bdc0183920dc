"""Fixtures shared by every test folder: where the data and the project's programs are."""

from __future__ import annotations

from pathlib import Path

import pytest

from byoctl.mnist import MnistError
from devkit import datasets, project


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """MNIST_DIR, else ../shared/mnist, else a checksummed download into .cache/mnist (devkit.datasets)."""
    try:
        return datasets.find_mnist()
    except MnistError as e:
        pytest.fail(str(e))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return project.ROOT
