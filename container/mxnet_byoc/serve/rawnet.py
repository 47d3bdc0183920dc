"""Any network in MXNet's layout through MXNet's C predict API: raw outputs, one input row at a time.

This is what AWS's default MXNet handlers compute (a Module bound for a batch of one, `Module.predict`
over the request's rows, outputs concatenated along the first axis), without importing the mxnet
package (cpredict.py says why). The same graph runs forward in inference mode either way, so the numbers
are the same.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .. import modeldir
from . import cpredict
from .device import Device


class Network:
    """`forward(rows)`: float32 rows shaped like the input (without its batch axis) -> the outputs of
    every row, concatenated along the first axis."""

    def __init__(self, model_dir: Path, device: Device):
        self.model_dir = Path(model_dir)
        self.device = device
        self.input_name, self.input_shape = read_data_shape(self.model_dir)  # input_shape: batch of one first
        symbol_json = cpredict.read(self.model_dir / modeldir.SYMBOL_FILE)
        _check_one_output(symbol_json, self.model_dir)
        self._predictor = cpredict.load(self.model_dir, symbol_json, self.input_name, self.input_shape[1:], device)
        self.output_shape = self._predictor.output_shape  # for one row
        if not self.output_shape:
            self.close()
            raise modeldir.ModelDirError(f"{self.model_dir}: the network's output is a scalar, not an array")

    def forward(self, rows: np.ndarray) -> np.ndarray:
        """`rows`: C-contiguous float32 (N, *input_shape[1:]). Returns float32 (N * out[0], *out[1:])."""
        return self._predictor.forward(rows).reshape(-1, *self.output_shape[1:])

    def close(self) -> None:
        self._predictor.close()


def read_data_shapes(model_dir: Path) -> list[tuple[str, tuple[int, ...]]]:
    """The inputs' names and shapes from model-shapes.json, each first axis set to 1 as AWS's handlers set it
    (they bind the Module for a batch of one and feed the request's rows one by one)."""
    path = Path(model_dir) / modeldir.SHAPES_FILE
    try:
        shapes = json.loads(path.read_text())
        entries = [(str(s["name"]), tuple(int(d) for d in s["shape"])) for s in shapes]
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise modeldir.ModelDirError(f"cannot read the input shapes from {path}: {e!r}") from None
    for name, shape in entries:
        if not shape or min(shape) < 1:
            raise modeldir.ModelDirError(f"{path}: input {name} has shape {list(shape)}: no batch axis or an "
                                         "empty dimension")
    return [(name, (1, *shape[1:])) for name, shape in entries]


def read_data_shape(model_dir: Path) -> tuple[str, tuple[int, ...]]:
    """The one input's name and shape (batch of one); the default handlers feed networks with one input."""
    entries = read_data_shapes(model_dir)
    if len(entries) != 1:
        names = ", ".join(name for name, _ in entries) or "none"
        raise modeldir.ModelDirError(
            f"{Path(model_dir) / modeldir.SHAPES_FILE} lists {len(entries)} inputs ({names}); the default handlers "
            "feed one: define input_fn and predict_fn in your inference script for other networks")
    return entries[0]


def _check_one_output(symbol_json: bytes, model_dir: Path) -> None:
    try:
        heads = json.loads(symbol_json)["heads"]
    except (ValueError, KeyError, TypeError) as e:
        raise modeldir.ModelDirError(f"{model_dir / modeldir.SYMBOL_FILE} is not an MXNet symbol: {e!r}") from None
    if len(heads) != 1:
        raise modeldir.ModelDirError(
            f"{model_dir / modeldir.SYMBOL_FILE} has {len(heads)} outputs; the default handlers answer with one: "
            "define output_fn (or transform_fn) in your inference script for other networks")

