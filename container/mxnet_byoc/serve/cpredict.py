"""A network in MXNet's C predict API (libmxnet.so through ctypes, capi.py), the one wrapper of it that both
ways of serving a model use: the built-in digit models (network.py) and AWS's default handlers for any model
in MXNet's layout (rawnet.py).

Why the C API, not the mxnet Python package: importing the package adds to every worker's start-up time and
memory, and a Gluon block called per request spends more time in MXNet's Python than the network does
(bench/serve_bench.py --mode one-image,aws serves the same mlp both ways: built in, and as a Gluon block in a
user's transform_fn).
"""

from __future__ import annotations

import ctypes
import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import modeldir
from .capi import InferenceError, check, library
from .device import Device


class Predictor:
    """A network bound for its one input at `batch_sizes` (largest first, ending in 1); the bindings share one
    copy of the weights. `forward` cuts a batch greedily into chunks of those sizes: no padding, no binding per
    request, and activations bounded by the largest size. Bound at (1,) alone it runs one row at a time.

    One call at a time (a lock guards it): sync gunicorn workers serve one request at a time anyway.
    """

    def __init__(self, symbol_json: bytes, params: bytes, input_name: str, row_shape: Sequence[int], device: Device,
                 batch_sizes: Sequence[int] = (1,)):
        if not batch_sizes or batch_sizes[-1] != 1 or list(batch_sizes) != sorted(set(batch_sizes), reverse=True):
            raise ValueError(f"batch sizes {list(batch_sizes)}: expected distinct sizes, largest first, ending in 1")
        self.row_shape = tuple(row_shape)
        self._lib = library()
        self._key = input_name.encode()
        self._lock = threading.Lock()
        self._handles: list[ctypes.c_void_p] = []
        try:
            one = self._create(symbol_json, params, device)
            # The output for a batch of one: (1, classes) for a classifier.
            self.output_shape: tuple[int, ...] = self._output_shape(one)
            for size in batch_sizes[:-1]:
                self._reshape(one, size)
        except InferenceError:
            self.close()
            raise
        self.outputs_per_row = math.prod(self.output_shape)
        per_row = math.prod(self.row_shape)
        self._in_bytes, self._out_bytes = per_row * 4, self.outputs_per_row * 4
        handles = [*self._handles[1:], one]  # in the order of batch_sizes
        self._chunks = [(size, handle, size * per_row, size * self.outputs_per_row)
                        for size, handle in zip(batch_sizes, handles)]

    def forward(self, rows: np.ndarray) -> np.ndarray:
        """float32 (N, outputs_per_row) for C-contiguous float32 rows (N, *row_shape)."""
        if rows.dtype != np.float32 or not rows.flags.c_contiguous or rows.shape[1:] != self.row_shape:
            raise ValueError(f"expected C-contiguous float32 (N, {', '.join(map(str, self.row_shape))})")
        if not self._chunks:
            raise InferenceError("the predictor is closed")
        count = rows.shape[0]
        out = np.empty((count, self.outputs_per_row), dtype=np.float32)
        source, target = rows.ctypes.data, out.ctypes.data
        lib, key, in_bytes, out_bytes = self._lib, self._key, self._in_bytes, self._out_bytes
        done = 0
        # Written for the one-image request, where Python's share of the time is largest: no helper calls
        # (bench/serve_bench.py --mode one-image: the `predict (forward pass)` stage of where a worker's CPU goes).
        with self._lock:
            for size, handle, in_size, out_size in self._chunks:
                while count - done >= size:
                    if (lib.MXPredSetInput(handle, key, source + done * in_bytes, in_size)
                            or lib.MXPredForward(handle)
                            or lib.MXPredGetOutput(handle, 0, target + done * out_bytes, out_size)):
                        check(-1)
                    done += size
        return out

    def close(self) -> None:
        for handle in self._handles:
            self._lib.MXPredFree(handle)
        self._handles.clear()
        self._chunks = []

    def _create(self, symbol_json: bytes, params: bytes, device: Device) -> ctypes.c_void_p:
        keys, indptr, shape = self._shape_args(1)
        handle = ctypes.c_void_p()
        check(self._lib.MXPredCreate(
            ctypes.c_char_p(symbol_json), ctypes.c_char_p(params), ctypes.c_int(len(params)),
            ctypes.c_int(device.dev_type), ctypes.c_int(device.dev_id), ctypes.c_uint32(1), keys, indptr, shape,
            ctypes.byref(handle),
        ))
        self._handles.append(handle)
        return handle

    def _reshape(self, handle: ctypes.c_void_p, size: int) -> None:
        # A reshaped predictor shares the weights of the first: one copy of the parameters in memory.
        keys, indptr, shape = self._shape_args(size)
        reshaped = ctypes.c_void_p()
        check(self._lib.MXPredReshape(ctypes.c_uint32(1), keys, indptr, shape, handle, ctypes.byref(reshaped)))
        self._handles.append(reshaped)

    def _shape_args(self, size: int) -> tuple[Any, Any, Any]:
        ndim = 1 + len(self.row_shape)
        keys = (ctypes.c_char_p * 1)(self._key)
        indptr = (ctypes.c_uint32 * 2)(0, ndim)
        shape = (ctypes.c_uint32 * ndim)(size, *self.row_shape)
        return keys, indptr, shape

    def _output_shape(self, handle: ctypes.c_void_p) -> tuple[int, ...]:
        data = ctypes.POINTER(ctypes.c_uint32)()
        ndim = ctypes.c_uint32()
        check(self._lib.MXPredGetOutputShape(handle, ctypes.c_uint32(0), ctypes.byref(data), ctypes.byref(ndim)))
        return tuple(data[i] for i in range(ndim.value))


def load(model_dir: Path, symbol_json: bytes, input_name: str, row_shape: Sequence[int], device: Device,
         batch_sizes: Sequence[int] = (1,)) -> Predictor:
    """`symbol_json` with the weights of `model_dir`, bound as `Predictor` binds it; `modeldir.ModelDirError`
    with MXNet's reason when MXNet refuses them."""
    params = read(model_dir / modeldir.PARAMS_FILE)
    try:
        return Predictor(symbol_json, params, input_name, row_shape, device, batch_sizes)
    except InferenceError as e:
        raise modeldir.ModelDirError(f"MXNet cannot load the model in {model_dir}: {e}") from None


def read(path: Path) -> bytes:
    """A model file's bytes; `modeldir.ModelDirError` saying why they cannot be read."""
    try:
        return path.read_bytes()
    except OSError as e:
        raise modeldir.ModelDirError(f"cannot read {path}: {e}") from None
