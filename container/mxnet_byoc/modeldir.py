"""The model directory: the one place where training and serving meet.

Layout (what AWS's MXNet inference container loads by default, plus our metadata):

    model-symbol.json    the network, input "data" of shape (N, C, H, W), pixels in [0, 1], one score per class
    model-0000.params    weights ("arg:NAME" / "aux:NAME"), loadable by mx.model.load_checkpoint(prefix, 0)
    model-shapes.json    [{"name": "data", "shape": [1, C, H, W]}]
    metadata.json        classes, input shape, preprocessing, hyperparameters, metrics, versions

Reading needs only the standard library, so serving can decide what to load before importing MXNet.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ReasonError
from .jsonfiles import read_json

BASE_DIR = "SAGEMAKER_BASE_DIR"  # moves /opt/ml, as the SageMaker training toolkit does
DEFAULT_BASE_DIR = "/opt/ml"

PREFIX = "model"
EPOCH = 0
SYMBOL_FILE = f"{PREFIX}-symbol.json"
PARAMS_FILE = f"{PREFIX}-{EPOCH:04d}.params"
SHAPES_FILE = f"{PREFIX}-shapes.json"
METADATA_FILE = "metadata.json"
INPUT_NAME = "data"
FORMAT_VERSION = 1

# How a picture becomes the network's input; recorded in metadata.json so clients can reproduce it.
PREPROCESSING = {
    "layout": "NCHW",
    "scale": "pixel / 255, so inputs lie in [0, 1]",
    "polarity": "light strokes on a dark background (MNIST's convention)",
    "normalization": "none outside the network",
}


class ModelDirError(ReasonError):
    """The model directory is missing or unreadable; the message says which file and why."""


@dataclass
class ModelInfo:
    input_shape: tuple[int, ...]  # (C, H, W), without the batch axis
    classes: list[Any]
    input_name: str = INPUT_NAME
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def base_dir() -> Path:
    """SageMaker's root folder, /opt/ml, unless $SAGEMAKER_BASE_DIR moves it (tests, laptops)."""
    return Path(os.environ.get(BASE_DIR) or DEFAULT_BASE_DIR)


def default_dir() -> Path:
    """Where training writes the model and serving finds it: <base>/model."""
    return base_dir() / "model"


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def save(
    symbol: Any,
    arg_params: dict[str, Any],
    aux_params: dict[str, Any],
    model_dir: Path,
    input_shape: tuple[int, ...],
    classes: list[Any],
    metadata: dict[str, Any],
) -> None:
    """Write the model directory. `symbol` must have one input named "data" and output class scores."""
    import mxnet as mx

    model_dir = Path(model_dir)
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
        prefix = str(model_dir / PREFIX)
        # Files are written under temporary names first, so a reader never sees half a model.
        symbol.save(f"{prefix}-symbol.json.tmp")
        os.replace(f"{prefix}-symbol.json.tmp", model_dir / SYMBOL_FILE)
        params = {f"arg:{k}": v.as_in_context(mx.cpu()) for k, v in arg_params.items()}
        params.update({f"aux:{k}": v.as_in_context(mx.cpu()) for k, v in aux_params.items()})
        mx.nd.save(f"{prefix}.params.tmp", params)
        os.replace(f"{prefix}.params.tmp", model_dir / PARAMS_FILE)
        write_json_atomic(model_dir / SHAPES_FILE, [{"name": INPUT_NAME, "shape": [1, *input_shape]}])
        meta = {
            "format_version": FORMAT_VERSION,
            "input_name": INPUT_NAME,
            "input_shape": list(input_shape),
            "classes": list(classes),
            "preprocessing": PREPROCESSING,
            **metadata,
        }
        write_json_atomic(model_dir / METADATA_FILE, meta)
    except (OSError, mx.base.MXNetError) as e:
        raise ModelDirError(f"cannot write the model to {model_dir}: {_why(e, model_dir)}") from e


def _why(exc: Exception, directory: Path) -> str:
    """MXNet's file errors say little; name the usual cause (a full disk) when it is the cause."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    try:
        if shutil.disk_usage(directory).free < 16 * 1024 * 1024:
            return "no space left on device"
    except OSError:
        pass
    return str(exc).strip().splitlines()[0][:300]


def load_info(model_dir: Path) -> ModelInfo:
    """Input shape and classes from metadata.json, else from model-shapes.json and the symbol."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelDirError(f"model directory {model_dir} does not exist")
    for name in (SYMBOL_FILE, PARAMS_FILE):
        if not (model_dir / name).is_file():
            raise ModelDirError(f"{model_dir / name} is missing (expected MXNet's {PREFIX}-symbol.json/"
                                f"{PREFIX}-0000.params layout)")
    meta_path = model_dir / METADATA_FILE
    if meta_path.is_file():
        meta = read_json(meta_path, ModelDirError)
        try:
            return ModelInfo(
                input_shape=tuple(int(d) for d in meta["input_shape"]),
                classes=list(meta["classes"]),
                input_name=str(meta.get("input_name", INPUT_NAME)),
                metadata=meta,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ModelDirError(f"{meta_path} is malformed: {e!r}") from e
    shapes_path = model_dir / SHAPES_FILE
    if not shapes_path.is_file():
        raise ModelDirError(f"neither {METADATA_FILE} nor {SHAPES_FILE} is in {model_dir}: input shape unknown")
    shapes = read_json(shapes_path, ModelDirError)
    try:
        entry = shapes[0]
        shape = tuple(int(d) for d in entry["shape"])[1:]
        name = str(entry.get("name", INPUT_NAME))
    except (IndexError, KeyError, TypeError, ValueError) as e:
        raise ModelDirError(f"{shapes_path} is malformed: {e!r}") from e
    if len(shape) == 2:  # some exporters record (N, H, W)
        shape = (1, *shape)
    # Classes are unknown without our metadata: the caller learns their count from the network's output.
    return ModelInfo(input_shape=shape, classes=[], input_name=name, metadata={})
