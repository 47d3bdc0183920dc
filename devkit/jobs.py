"""A SageMaker training job's folder ($SAGEMAKER_BASE_DIR, /opt/ml in the image), laid out by the
contract's own paths (mxnet_byoc.train.environment.Paths), and `container/train` run in it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from mxnet_byoc.train.environment import Paths

from . import KitError, project, shell
from .idx import MNIST_FILES

CHANNELS = ("training", "test")
# What SageMaker writes for a one-host File-mode job (make_job(..., sagemaker_config=True)).
FILE_MODE = {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated", "RecordWrapperType": "None"}
ONE_HOST = {"current_host": "algo-1", "hosts": ["algo-1"], "network_interface_name": "eth0"}


def make_job(base: Path, channels_from: Path, hyperparameters: Mapping[str, str] | None = None,
             config: Mapping[str, Any] | None = None, channels: Iterable[str] = CHANNELS,
             sagemaker_config: bool = False, link: bool = False) -> Path:
    """`base` laid out as SageMaker lays out /opt/ml; returns `base`.

    hyperparameters.json holds `hyperparameters` (SageMaker passes every value as a string); `config` maps
    more file names of input/config to their JSON content (resourceconfig.json, checkpointconfig.json...).
    `sagemaker_config` also writes inputdataconfig.json (every channel File mode, FullyReplicated) and a
    one-host resourceconfig.json, as SageMaker does; `config` still wins. Each channel's files come from
    `channels_from`: its folder of that name when there is one, else MNIST's two files of that channel
    (`channels_from` is then an MNIST folder). They are copied, so a test may change them; `link` hard-links
    them instead (still real files inside the folder, so a Docker mount sees them), for jobs that only
    read their data.
    """
    paths = Paths(Path(base))
    channels = tuple(channels)
    files: dict[str, Any] = {"hyperparameters.json": dict(hyperparameters or {})}
    if sagemaker_config:
        files["inputdataconfig.json"] = {name: FILE_MODE for name in channels}
        files["resourceconfig.json"] = ONE_HOST
    files.update(config or {})
    paths.config.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (paths.config / name).write_text(json.dumps(content))
    for name in channels:
        _fill_channel(Path(channels_from), name, paths.data / name, link)
    return paths.base


def _fill_channel(source: Path, name: str, target: Path, link: bool) -> None:
    put = _link_or_copy if link else shutil.copy2
    if (source / name).is_dir():
        shutil.copytree(source / name, target, copy_function=put)
        return
    if name not in MNIST_FILES:
        raise KitError(f"{source} has no folder {name!r}, and {name!r} is not one of MNIST's channels")
    target.mkdir(parents=True)
    for file in MNIST_FILES[name]:
        put(source / file, target / file)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system
        shutil.copy2(source, target)


def metrics_json(base: Path) -> dict[str, Any]:
    """output/data/metrics.json of a finished job."""
    return json.loads((Paths(Path(base)).output_data / "metrics.json").read_text())


def train_env(base: Path, **extra: str) -> dict[str, str]:
    """This environment with SAGEMAKER_BASE_DIR=`base`, the project's virtualenv first on PATH (`train` is
    `#!/usr/bin/env python3`, as in the image) and unbuffered output; `extra` on top."""
    return {**os.environ, "SAGEMAKER_BASE_DIR": str(base), "PATH": f"{project.python_bin()}:{os.environ['PATH']}",
            "PYTHONUNBUFFERED": "1", **extra}


def start_train(base: Path, env: Mapping[str, str] | None = None, **extra: str) -> subprocess.Popen:
    """`container/train` on `base` in the background, stdout and stderr together on `.stdout` as text;
    `env` replaces train_env(base) when given."""
    return subprocess.Popen([str(project.TRAIN)], env=dict(env) if env is not None else train_env(base, **extra),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run_train(base: Path, timeout: float = 900, env: Mapping[str, str] | None = None,
              **extra: str) -> shell.Finished:
    """`container/train` on `base` to completion."""
    return shell.run([project.TRAIN], timeout=timeout, env=env if env is not None else train_env(base, **extra))


@dataclass
class TrainedJob:
    """A job folder after a `train` run, and that run."""

    base: Path
    run: shell.Finished

    @property
    def paths(self) -> Paths:
        return Paths(self.base)

    @property
    def model_dir(self) -> Path:
        return self.paths.model

    @cached_property
    def metrics(self) -> dict[str, Any]:
        return metrics_json(self.base)

    @property
    def failure(self) -> str:
        """output/failure, or "" when there is none."""
        path = self.paths.failure
        return path.read_text() if path.exists() else ""
