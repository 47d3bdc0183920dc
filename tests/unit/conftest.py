"""Models shared by the script-mode serving tests (devkit/script_models.py), made once per session. They are
read, never changed: a test that changes a model directory makes its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from devkit.script_models import copy_aws_model, export_conv_model, train_regression


@pytest.fixture(scope="session")
def aws_model(tmp_path_factory) -> Path:
    return copy_aws_model(tmp_path_factory.mktemp("aws") / "model")


@pytest.fixture(scope="session")
def regression(tmp_path_factory) -> Path:
    return train_regression(tmp_path_factory.mktemp("regression") / "model")


@pytest.fixture(scope="session")
def conv(tmp_path_factory) -> Path:
    return export_conv_model(tmp_path_factory.mktemp("conv") / "model")
