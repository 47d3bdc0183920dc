"""The JSON files SageMaker writes to <base>/input/config, read the same way for the built-in job
(environment.py) and for a user's script (script/smenv.py): one reading and one set of failure reasons.

Each reader returns the file's content as SageMaker wrote it, checked for the shape the job relies on, or
what a laptop's `docker run` without that file means. Only the standard library.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ReasonError
from ..jsonfiles import read_json

HYPERPARAMETERS = "hyperparameters.json"
RESOURCES = "resourceconfig.json"
INPUT_DATA = "inputdataconfig.json"
CHECKPOINTS = "checkpointconfig.json"
DEFAULT_HOST = "algo-1"  # the one host of a job without resourceconfig.json, as SageMaker names it


class ContractError(ReasonError):
    """The job's configuration cannot be honoured; the message is the job's failure reason."""


def _object(config_dir: Path, name: str, holds: str) -> dict[str, Any] | None:
    """The JSON object in `name`; None when the file is absent or holds null."""
    path = Path(config_dir) / name
    if not path.exists():
        return None
    value = read_json(path, ContractError)
    if value is not None and not isinstance(value, dict):
        raise ContractError(f"{name} must hold a JSON object of {holds}, not {type(value).__name__}")
    return value


def hyperparameters(config_dir: Path) -> dict[str, Any]:
    """Name -> value as SageMaker passes them (strings); empty without the file."""
    return _object(config_dir, HYPERPARAMETERS, "name -> value") or {}


def resources(config_dir: Path) -> dict[str, Any]:
    """resourceconfig.json with `hosts` a list of names and `current_host` among them; one host named
    algo-1 without the file."""
    config = _object(config_dir, RESOURCES, "settings")
    if not config:
        return {"current_host": DEFAULT_HOST, "hosts": [DEFAULT_HOST]}
    hosts = config.get("hosts")
    if not isinstance(hosts, list) or not hosts or not all(isinstance(h, str) for h in hosts):
        raise ContractError(f"{RESOURCES} needs `hosts`, a list of host names, not {hosts!r}")
    if "current_host" not in config:
        raise ContractError(f"{RESOURCES} lacks `current_host`, the name of this host among {sorted(hosts)}")
    if config["current_host"] not in hosts:
        raise ContractError(f"{RESOURCES}: current_host {config['current_host']!r} is not among hosts "
                            f"{sorted(hosts)}")
    return config


def input_data(config_dir: Path) -> dict[str, dict[str, Any]] | None:
    """Channel name -> its settings; None without the file (the folders under input/data are the channels)."""
    config = _object(config_dir, INPUT_DATA, "channel name -> settings")
    if config is None:
        return None
    for name, spec in config.items():
        if spec is not None and not isinstance(spec, dict):
            raise ContractError(f"{INPUT_DATA}: channel {name!r} must map to a JSON object of settings, "
                                f"not {type(spec).__name__}")
    return {name: spec or {} for name, spec in config.items()}


def checkpoints(config_dir: Path) -> dict[str, Any]:
    """checkpointconfig.json (LocalPath, S3Uri); empty without the file."""
    return _object(config_dir, CHECKPOINTS, "settings") or {}
