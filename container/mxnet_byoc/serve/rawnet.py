"""Any network in MXNet's layout through MXNet's C predict API: raw outputs, one input row at a time.

This is what AWS's default MXNet handlers compute (a Module bound for a batch of one, `Module.predict`
over the request's rows, outputs concatenated along the first axis), without importing the mxnet
package: about a second and 70 MB less per worker, and microseconds instead of a millisecond of Python
per request. The same graph runs forward in inference mode either way, so the numbers are the same.
"""

from __future__ import annotations

import ctypes
import json
import math
import threading
from pathlib import Path

import numpy as np

from .. import modeldir
from .capi import InferenceError, check, library
from .device import Device


class Network:
    """`forward(rows)`: float32 rows shaped like the input (without its batch axis) -> the outputs of
    every row, concatenated along the first axis."""

    def __init__(self, model_dir: Path, device: Device):
        self.model_dir = Path(model_dir)
        self.device = device
        self.input_name, self.input_shape = read_data_shape(self.model_dir)  # input_shape: batch of one first
        symbol_json = _read(self.model_dir / modeldir.SYMBOL_FILE)
        _check_one_output(symbol_json, self.model_dir)
        params = _read(self.model_dir / modeldir.PARAMS_FILE)
        self._lib = library()
        self._lock = threading.Lock()
        self._key = self.input_name.encode()
        self._handle = ctypes.c_void_p()
        keys = (ctypes.c_char_p * 1)(self._key)
        indptr = (ctypes.c_uint32 * 2)(0, len(self.input_shape))
        shape = (ctypes.c_uint32 * len(self.input_shape))(*self.input_shape)
        try:
            check(self._lib.MXPredCreate(
                ctypes.c_char_p(symbol_json), ctypes.c_char_p(params), ctypes.c_int(len(params)),
                ctypes.c_int(device.dev_type), ctypes.c_int(device.dev_id), ctypes.c_uint32(1), keys, indptr, shape,
                ctypes.byref(self._handle)))
            self.output_shape = self._output_shape()
        except InferenceError as e:
            self.close()
            raise modeldir.ModelDirError(f"MXNet cannot load the model in {self.model_dir}: {e}") from None
        if not self.output_shape:
            self.close()
            raise modeldir.ModelDirError(f"{self.model_dir}: the network's output is a scalar, not an array")
        self.row_size = math.prod(self.input_shape)
        self._out_size = math.prod(self.output_shape)

    def forward(self, rows: np.ndarray) -> np.ndarray:
        """`rows`: C-contiguous float32 (N, *input_shape[1:]). Returns float32 (N * out[0], *out[1:])."""
        count = rows.shape[0]
        out = np.empty((count * self.output_shape[0], *self.output_shape[1:]), dtype=np.float32)
        lib, handle, key, size, out_size = self._lib, self._handle, self._key, self.row_size, self._out_size
        source, target = rows.ctypes.data, out.ctypes.data
        with self._lock:
            for i in range(count):
                if (lib.MXPredSetInput(handle, key, source + 4 * size * i, size)
                        or lib.MXPredForward(handle)
                        or lib.MXPredGetOutput(handle, 0, target + 4 * out_size * i, out_size)):
                    check(-1)
        return out

    def close(self) -> None:
        if self._handle.value:
            self._lib.MXPredFree(self._handle)
            self._handle = ctypes.c_void_p()

    def _output_shape(self) -> tuple[int, ...]:
        data = ctypes.POINTER(ctypes.c_uint32)()
        ndim = ctypes.c_uint32()
        check(self._lib.MXPredGetOutputShape(self._handle, ctypes.c_uint32(0), ctypes.byref(data),
                                              ctypes.byref(ndim)))
        return tuple(data[i] for i in range(ndim.value))


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


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise modeldir.ModelDirError(f"cannot read {path}: {e}") from None

