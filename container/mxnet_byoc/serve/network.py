"""A model directory of ours loaded into MXNet's C predict API (cpredict.py), and predictions on image arrays.

Serving one image must be cheap and a batch must use the CPU well, so the network is bound at a few batch
sizes (1, 8, 32, 128) and a batch is cut greedily into chunks of those sizes. Why no larger size: on one
thread, larger chunks cost the cnn more per image and each worker more memory, and gain the mlp little
(bench/serve_bench.py --mode batch: `forward` in where a uint8 batch's CPU goes, run with other BATCH_SIZES).
"""

from __future__ import annotations

import ctypes
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import modeldir
from . import cpredict
from .capi import InferenceError, check, library
from .device import CPU, Device

BATCH_SIZES = (128, 32, 8, 1)  # largest first: the greedy split takes the largest that fits
PROBABILITY_HEADS = {"softmax", "SoftmaxActivation"}  # networks that already end in probabilities


class Model:
    """A loaded network: `predict` maps float32 (N, C, H, W) in [0, 1] to (N, K) class probabilities."""

    def __init__(self, model_dir: Path | str, device: Device = CPU):
        self.model_dir = Path(model_dir)
        self.device = device
        self.info = modeldir.load_info(self.model_dir)
        self.input_shape: tuple[int, ...] = tuple(self.info.input_shape)
        if len(self.input_shape) != 3 or min(self.input_shape) < 1:
            raise modeldir.ModelDirError(
                f"{self.model_dir}: input shape {list(self.input_shape)} is not (channels, height, width)"
            )
        symbol_json = _with_softmax(cpredict.read(self.model_dir / modeldir.SYMBOL_FILE))
        self._predictor = cpredict.load(self.model_dir, symbol_json, self.info.input_name, self.input_shape, device,
                                        BATCH_SIZES)
        shape = self._predictor.output_shape
        if len(shape) < 2 or shape[0] != 1:
            self.close()
            raise modeldir.ModelDirError(
                f"{self.model_dir}: network output shape {list(shape)} is not (batch, classes)")
        self.num_classes = self._predictor.outputs_per_row
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
        return self._predictor.forward(batch)

    def warm_up(self) -> None:
        """One prediction at every bound batch size; raises if the network gives no probabilities."""
        for size in BATCH_SIZES:
            probabilities = self.predict(np.zeros((size, *self.input_shape), dtype=np.float32))
            if not np.all(np.isfinite(probabilities)) or not np.allclose(probabilities.sum(axis=1), 1, atol=1e-3):
                raise modeldir.ModelDirError(
                    f"{self.model_dir}: warm-up prediction gave no valid probabilities (NaN or not summing to 1)"
                )

    def close(self) -> None:
        self._predictor.close()


def load(model_dir: Path | str, device: Device = CPU) -> Model:
    """Load and warm up the model in `model_dir` on `device` (the CPU unless told); raises
    `modeldir.ModelDirError` saying what is wrong."""
    model = Model(model_dir, device)
    model.warm_up()
    return model


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
