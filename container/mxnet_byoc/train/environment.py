"""What SageMaker gives a training container and what it takes back, read into one typed object.

Everything is rooted at $SAGEMAKER_BASE_DIR (default /opt/ml). Only the standard library: no MXNet, no numpy.
"""

from __future__ import annotations

import logging
import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import modeldir
from ..errors import ReasonError
from . import configfiles, hyperparameters
from .configfiles import ContractError

TRAINING_JOB_NAME = "TRAINING_JOB_NAME"

TRAINING_CHANNEL = "training"
# The first of these that exists is the held-out set; absent, a fraction of `training` is held out.
VALIDATION_CHANNELS = ("test", "validation")
FAILURE_LIMIT = 1024  # SageMaker keeps this many characters of output/failure as FailureReason


class TrainingError(ReasonError):
    """Training cannot go on; the message is the job's failure reason."""


class Stopped(Exception):
    """SIGTERM arrived: a checkpoint was written and the job ends as stopped, with a non-zero exit."""


@dataclass
class Paths:
    base: Path

    @property
    def config(self) -> Path:
        return self.base / "input" / "config"

    @property
    def data(self) -> Path:
        return self.base / "input" / "data"

    @property
    def model(self) -> Path:
        return self.base / "model"

    @property
    def output(self) -> Path:
        return self.base / "output"

    @property
    def output_data(self) -> Path:
        return self.base / "output" / "data"

    @property
    def failure(self) -> Path:
        return self.base / "output" / "failure"

    @property
    def default_checkpoints(self) -> Path:
        return self.base / "checkpoints"


@dataclass
class Channel:
    name: str
    path: Path
    input_mode: str = "File"
    distribution: str = "FullyReplicated"
    content_type: str | None = None


@dataclass
class Resources:
    current_host: str
    hosts: list[str]
    network_interface: str | None = None
    instance_type: str | None = None
    instance_groups: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rank(self) -> int:
        return self.hosts.index(self.current_host)

    @property
    def is_master(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return len(self.hosts) > 1


@dataclass
class TrainingEnv:
    paths: Paths
    hyperparameters: hyperparameters.Hyperparameters
    channels: dict[str, Channel]
    resources: Resources
    checkpoint_dir: Path
    job_name: str | None

    @property
    def training(self) -> Channel:
        return self.channels[TRAINING_CHANNEL]

    @property
    def validation(self) -> Channel | None:
        for name in VALIDATION_CHANNELS:
            if name in self.channels:
                return self.channels[name]
        return None


def _channels(paths: Paths, config: dict[str, Any] | None) -> dict[str, Channel]:
    channels: dict[str, Channel] = {}
    # inputdataconfig.json names the channels SageMaker mounted; on a laptop it may be absent, so the
    # folders under input/data count too.
    for name, spec in (config or {}).items():
        channels[name] = Channel(
            name=name,
            path=paths.data / name,
            input_mode=spec.get("TrainingInputMode", "File"),
            distribution=spec.get("S3DistributionType", "FullyReplicated"),
            content_type=spec.get("ContentType"),
        )
    if paths.data.is_dir():
        for entry in sorted(paths.data.iterdir()):
            if entry.is_dir() and entry.name not in channels:
                channels[entry.name] = Channel(name=entry.name, path=entry)
    for channel in channels.values():
        if channel.input_mode == "Pipe":
            raise ContractError(
                f"channel {channel.name!r} uses Pipe mode, which this image does not read; "
                "use File or FastFile input mode"
            )
    return channels


def _resources(config: dict[str, Any]) -> Resources:
    return Resources(
        current_host=config["current_host"],
        hosts=sorted(config["hosts"]),
        network_interface=config.get("network_interface_name"),
        instance_type=config.get("current_instance_type"),
        instance_groups=list(config.get("instance_groups") or []),
    )


def load(base: Path | None = None) -> TrainingEnv:
    """Read every config file SageMaker writes; raise ContractError with the job's failure reason."""
    paths = Paths(Path(base) if base else modeldir.base_dir())
    hps = hyperparameters.parse(configfiles.hyperparameters(paths.config))
    channels = _channels(paths, configfiles.input_data(paths.config))
    if TRAINING_CHANNEL not in channels:
        raise ContractError(
            f"no {TRAINING_CHANNEL!r} channel: expected training data under {paths.data / TRAINING_CHANNEL} "
            f"(channels found: {sorted(channels) or 'none'})"
        )
    for channel in channels.values():
        if not channel.path.is_dir():
            raise ContractError(f"channel {channel.name!r} is declared but {channel.path} does not exist")
    resources = _resources(configfiles.resources(paths.config))
    checkpoint_dir = Path(configfiles.checkpoints(paths.config).get("LocalPath") or paths.default_checkpoints)
    return TrainingEnv(
        paths=paths,
        hyperparameters=hps,
        channels=channels,
        resources=resources,
        checkpoint_dir=checkpoint_dir,
        job_name=os.environ.get(TRAINING_JOB_NAME),
    )


def write_success(paths: Paths) -> None:
    """output/success, SageMaker's mark of a job that ended well; a folder that cannot take it is only logged."""
    try:
        paths.output.mkdir(parents=True, exist_ok=True)
        (paths.output / "success").write_text("")
    except OSError as e:
        logging.getLogger(__name__).warning("cannot write %s: %s", paths.output / "success", e)


def write_failure(paths: Paths, reason: str, exc: BaseException | None = None) -> None:
    """First line: the human reason (SageMaker shows the first 1024 characters); the traceback below."""
    first = " ".join(reason.split())[:FAILURE_LIMIT - 1]
    text = first + "\n"
    if exc is not None:
        text += "\n" + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        paths.output.mkdir(parents=True, exist_ok=True)
        with open(paths.failure, "w") as f:
            f.write(text)
    except OSError:
        pass  # the reason still reaches the log through the caller's print
