"""The user code of the local-mode Horovod jobs (SDK 2's and SDK 3's): AWS's own test script, unchanged, then the
MNIST example, in one entry point (a Python one, so that both run under the launcher's `python -m mpi4py`)."""

from __future__ import annotations

import shutil
from pathlib import Path

from devkit.project import ROOT

AWS_SCRIPT = ROOT / "tests" / "resources" / "aws_hvd_basic" / "train_hvd_basic.py"
EXAMPLE = ROOT / "examples" / "horovod" / "train_hvd_mnist.py"
ENTRY = """\
import runpy
runpy.run_path("train_hvd_basic.py", run_name="__main__")
runpy.run_path("train_hvd_mnist.py", run_name="__main__")
"""


def write_code(folder: Path) -> Path:
    """`folder` with train.py (the entry point) and the two scripts it runs; returns `folder`."""
    shutil.copy(AWS_SCRIPT, folder / "train_hvd_basic.py")
    shutil.copy(EXAMPLE, folder / "train_hvd_mnist.py")
    (folder / "train.py").write_text(ENTRY)
    return folder
