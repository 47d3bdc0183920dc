"""Fixtures shared by every test folder: where the data and the project's programs are."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # shared helpers such as jobkit (a PyPI package squats on `tests`)


def mnist_path() -> Path:
    # The full set lives beside the checkout (never committed); MNIST_DIR points elsewhere.
    return Path(os.environ.get("MNIST_DIR") or ROOT.parent / "shared" / "mnist")


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    path = mnist_path()
    if not (path / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail(f"MNIST not found in {path}: set MNIST_DIR to a folder with the IDX .gz files")
    return path


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT
