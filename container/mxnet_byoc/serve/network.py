"""A model directory loaded into MXNet's C predict API, and predictions on image arrays.

Why the C API through ctypes (capi.py), not the mxnet Python package: importing the package costs about a
second and 70 MB per process, and a Gluon block called per request spends more time in MXNet's Python than the
network does (bench/serve_bench.py serves the same mlp both ways and prints where each request's CPU goes).

Serving one image must be cheap and a batch must use the CPU well, so the network is bound at a few
batch sizes (1, 8, 32, 128) and a batch is cut greedily into chunks of those sizes: no padding, no
re-binding per request, and activations bounded by the largest chunk. Why 128 (one thread, 1,000 images,
2026-12-07): larger chunks cost the CNN more per image (22.4 us at 128, 23.0 at 256, 24.7 at 512, 27.8 at
1,000) and 7-51 MiB more per worker; the MLP gains 2% at 256 or 512 and 12% only with a bind of exactly 1,000.
"""

from __future__ import annotations

import ctypes
import json
import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import modeldir
from .capi import InferenceError, check, library
from .device import CPU, Device

BATCH_SIZES = (128, 32, 8, 1)  # largest first: the greedy split takes the largest that fits
PROBABILITY_HEADS = {"softmax", "SoftmaxActivation"}  # networks that already end in probabilities

class Model:
    """A loaded network: `predict` maps float32 (N, C, H, W) in [0, 1] to (N, K) class probabilities.

    One call at a time (a lock guards it): sync gunicorn workers serve one request at a time anyway.
    """

    def __init__(self, model_dir: Path | str, device: Device = CPU):
        self.model_dir = Path(model_dir)
        self.device = device
        self.info = modeldir.load_info(self.model_dir)
        self.input_shape: tuple[int, ...] = tuple(self.info.input_shape)
        if len(self.input_shape) != 3 or min(self.input_shape) < 1:
            raise modeldir.ModelDirError(
                f"{self.model_dir}: input shape {list(self.input_shape)} is not (channels, height, width)"
            )
        self._per_image = math.prod(self.input_shape)
        self._in_bytes = self._per_image * 4
        self._lib = library()
        symbol_json = _with_softmax(_read(self.model_dir / modeldir.SYMBOL_FILE))
        params = _read(self.model_dir / modeldir.PARAMS_FILE)
        self._lock = threading.Lock()
        self._handles: dict[int, ctypes.c_void_p] = {}
        self._key = self.info.input_name.encode()
        try:
            first = self._create(symbol_json, params, BATCH_SIZES[-1])
            for size in BATCH_SIZES[:-1]:
                self._handles[size] = self._reshape(first, size)
        except InferenceError as e:
            self.close()
            raise modeldir.ModelDirError(f"MXNet cannot load the model in {self.model_dir}: {e}") from None
        self.num_classes = self._output_width(first)
        self._out_bytes = self.num_classes * 4
        self._chunks = [(size, self._handles[size], size * self._per_image, size * self.num_classes)
                        for size in BATCH_SIZES]
        classes = self.info.classes or list(range(self.num_classes))
        if len(classes) != self.num_classes:
            self.close()
            raise modeldir.ModelDirError(
                f"{self.model_dir}: {modeldir.METADATA_FILE} lists {len(classes)} classes but the network "
                f"outputs {self.num_classes} scores"
            )
        self.classes: list[Any] = classes

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities (N, K) as float32 for a C-contiguous float32 batch (N, C, H, W)."""
        if batch.dtype != np.float32 or not batch.flags.c_contiguous or batch.shape[1:] != self.input_shape:
            raise ValueError(f"expected C-contiguous float32 (N, {', '.join(map(str, self.input_shape))})")
        count = batch.shape[0]
        out = np.empty((count, self.num_classes), dtype=np.float32)
        source, target = batch.ctypes.data, out.ctypes.data
        lib, key, in_bytes, out_bytes = self._lib, self._key, self._in_bytes, self._out_bytes
        done = 0
        # Written for the one-image request, where Python's share of the time is largest: no helper calls.
        with self._lock:
            for size, handle, in_size, out_size in self._chunks:
                while count - done >= size:
                    if (lib.MXPredSetInput(handle, key, source + done * in_bytes, in_size)
                            or lib.MXPredForward(handle)
                            or lib.MXPredGetOutput(handle, 0, target + done * out_bytes, out_size)):
                        check(-1)
                    done += size
        return out

    def warm_up(self) -> None:
        """One prediction at every bound batch size; raises if the network gives no probabilities."""
        for size in BATCH_SIZES:
            probabilities = self.predict(np.zeros((size, *self.input_shape), dtype=np.float32))
            if not np.all(np.isfinite(probabilities)) or not np.allclose(probabilities.sum(axis=1), 1, atol=1e-3):
                raise modeldir.ModelDirError(
                    f"{self.model_dir}: warm-up prediction gave no valid probabilities (NaN or not summing to 1)"
                )

    def close(self) -> None:
        lib = library()
        for handle in self._handles.values():
            lib.MXPredFree(handle)
        self._handles.clear()

    def _create(self, symbol_json: bytes, params: bytes, size: int) -> ctypes.c_void_p:
        keys, indptr, shape = self._shape_args(size)
        handle = ctypes.c_void_p()
        check(library().MXPredCreate(
            ctypes.c_char_p(symbol_json), ctypes.c_char_p(params), ctypes.c_int(len(params)),
            ctypes.c_int(self.device.dev_type), ctypes.c_int(self.device.dev_id), ctypes.c_uint32(1), keys, indptr,
            shape, ctypes.byref(handle),
        ))
        self._handles[size] = handle
        return handle

    def _reshape(self, handle: ctypes.c_void_p, size: int) -> ctypes.c_void_p:
        # A reshaped predictor shares the weights of the first: one copy of the parameters in memory.
        keys, indptr, shape = self._shape_args(size)
        reshaped = ctypes.c_void_p()
        check(library().MXPredReshape(ctypes.c_uint32(1), keys, indptr, shape, handle, ctypes.byref(reshaped)))
        return reshaped

    def _shape_args(self, size: int) -> tuple[Any, Any, Any]:
        keys = (ctypes.c_char_p * 1)(self._key)
        indptr = (ctypes.c_uint32 * 2)(0, 1 + len(self.input_shape))
        shape = (ctypes.c_uint32 * (1 + len(self.input_shape)))(size, *self.input_shape)
        return keys, indptr, shape

    def _output_width(self, handle: ctypes.c_void_p) -> int:
        data = ctypes.POINTER(ctypes.c_uint32)()
        ndim = ctypes.c_uint32()
        check(library().MXPredGetOutputShape(handle, ctypes.c_uint32(0), ctypes.byref(data), ctypes.byref(ndim)))
        shape = [data[i] for i in range(ndim.value)]
        if len(shape) < 2 or shape[0] != BATCH_SIZES[-1]:
            raise modeldir.ModelDirError(f"{self.model_dir}: network output shape {shape} is not (batch, classes)")
        return math.prod(shape[1:])


def load(model_dir: Path | str, device: Device = CPU) -> Model:
    """Load and warm up the model in `model_dir` on `device` (the CPU unless told); raises
    `modeldir.ModelDirError` saying what is wrong."""
    model = Model(model_dir, device)
    model.warm_up()
    return model


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise modeldir.ModelDirError(f"cannot read {path}: {e}") from None


def _with_softmax(symbol_json: bytes) -> bytes:
    """The network's first output followed by a softmax over classes, unless it already ends in one.

    The model directory's contract is raw scores (a softmax at export would be silently applied twice
    otherwise). AWS's MXNet models trained with the Module API end in SoftmaxOutput, a training head
    with a label input: it is replaced by the softmax of its scores, which is what it computes forward.
    """
    try:
        graph = json.loads(symbol_json)
        head = graph["heads"][0]
        node = graph["nodes"][head[0]]
        if node["op"] in PROBABILITY_HEADS:
            return symbol_json
        if node["op"] == "SoftmaxOutput":
            graph["heads"] = [node["inputs"][0]]
            symbol_json = json.dumps(graph).encode()
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise modeldir.ModelDirError(f"{modeldir.SYMBOL_FILE} is not an MXNet symbol: {e!r}") from None
    lib = library()
    symbol, output, softmax, op = ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_void_p()
    try:
        check(lib.MXSymbolCreateFromJSON(ctypes.c_char_p(symbol_json), ctypes.byref(symbol)))
        check(lib.MXSymbolGetOutput(symbol, ctypes.c_uint32(0), ctypes.byref(output)))
        check(lib.NNGetOpHandle(b"softmax", ctypes.byref(op)))
        keys, values = _c_strings(["axis"]), _c_strings(["1"])
        check(lib.MXSymbolCreateAtomicSymbol(op, ctypes.c_uint32(1), keys, values, ctypes.byref(softmax)))
        args = (ctypes.c_void_p * 1)(output)
        check(lib.MXSymbolCompose(softmax, b"byoc_softmax", ctypes.c_uint32(1), None, args))
        text = ctypes.c_char_p()
        check(lib.MXSymbolSaveToJSON(softmax, ctypes.byref(text)))
        return bytes(text.value or b"")
    except InferenceError as e:
        raise modeldir.ModelDirError(f"{modeldir.SYMBOL_FILE} cannot be read by MXNet: {e}") from None
    finally:
        for handle in (symbol, output, softmax):
            if handle.value:
                lib.MXSymbolFree(handle)


def _c_strings(items: Sequence[str]) -> Any:
    return (ctypes.c_char_p * len(items))(*(item.encode() for item in items))
