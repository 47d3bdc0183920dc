"""Where the project's programs and folders are (byoctl is installed editable from the checkout)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONTAINER = ROOT / "container"
TRAIN = CONTAINER / "train"
SERVE = CONTAINER / "serve"
SCRIPTS = ROOT / "scripts"
VENV_BIN = ROOT / ".venv" / "bin"
LOGS = ROOT / "build" / "test-logs"  # logs the tests keep for a person to read after a failure
MNIST_CACHE = ROOT / ".cache" / "mnist"  # where MNIST is downloaded to (git ignores .cache)
SHARED_MNIST = ROOT.parent / "shared" / "mnist"  # a copy kept beside the checkout, never committed


def python_bin() -> Path:
    """The bin folder that runs the image's programs outside Docker: the project's .venv (it has MXNet,
    which byoctl's own environment may not), else this interpreter's."""
    return VENV_BIN if (VENV_BIN / "python").exists() else Path(sys.executable).parent
