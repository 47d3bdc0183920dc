"""Direct access to CPU NDArray memory, for the training loop's per-step bookkeeping.

Only valid under MXNet's NaiveEngine on CPU contexts: there every MXNet call has finished when it
returns, so numpy and BLAS may read and write an array's memory between calls without racing the
engine. In return, a step's small operations (copying a batch, summing statistics, the SGD update)
are a numpy or BLAS call each instead of an MXNet op pushed through the engine: on a small network these
dominate the step (the training bench's throughput mode, bench/train_bench.py, measures the loop as a whole).
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import mxnet as mx
import numpy as np
from mxnet.base import _LIB, check_call


def available(contexts: list[mx.Context], naive_engine: bool) -> bool:
    """`naive_engine`: MXNet was imported under the NaiveEngine (runtime.Runtime.naive_engine)."""
    return naive_engine and all(c.device_type == "cpu" for c in contexts)


def view(array: mx.nd.NDArray) -> np.ndarray:
    """A numpy array over the NDArray's memory (no copy); keep the NDArray alive while it is used."""
    if array.context.device_type != "cpu" or array.stype != "default" or array.dtype != np.float32:
        raise ValueError("host views need dense float32 CPU arrays")
    ptr = ctypes.c_void_p()
    check_call(_LIB.MXNDArrayGetData(array.handle, ctypes.byref(ptr)))
    buf = (ctypes.c_float * array.size).from_address(ptr.value)
    return np.ctypeslib.as_array(buf).reshape(array.shape)


class Executor:
    """Forward and backward of a bound executor without rebuilding Python output objects each call."""

    def __init__(self, exe: mx.executor.Executor):
        self.exe, self.handle = exe, exe.handle

    def forward_backward(self) -> None:
        check_call(_LIB.MXExecutorForward(self.handle, ctypes.c_int(1)))
        check_call(_LIB.MXExecutorBackwardEx(self.handle, ctypes.c_uint(0), None, ctypes.c_int(1)))


def _load_blas():
    """MXNet's own OpenBLAS (shipped beside libmxnet.so); numpy's fallback when it is missing."""
    here = Path(mx.__file__).parent
    for path in sorted(here.glob("libopenblas*.so*")):
        try:
            lib = ctypes.CDLL(str(path))
            # Pointers travel as plain ints: building ctypes pointer objects would cost more than the math.
            lib.cblas_saxpy.restype = lib.cblas_sscal.restype = None
            lib.cblas_saxpy.argtypes = [ctypes.c_int, ctypes.c_float, ctypes.c_void_p, ctypes.c_int,
                                        ctypes.c_void_p, ctypes.c_int]
            lib.cblas_sscal.argtypes = [ctypes.c_int, ctypes.c_float, ctypes.c_void_p, ctypes.c_int]
            return lib
        except (OSError, AttributeError):
            continue
    return None


_BLAS = _load_blas()


def axpby(alpha: float, x: np.ndarray, beta: float, y: np.ndarray) -> None:
    """y = alpha * x + beta * y, in place. OpenBLAS's saxpy is vectorised and threaded where its saxpby
    is not, so this is sscal (when beta != 1) followed by saxpy."""
    if _BLAS is not None:
        if beta != 1.0:
            _BLAS.cblas_sscal(y.size, beta, y.ctypes.data, 1)
        _BLAS.cblas_saxpy(x.size, alpha, x.ctypes.data, 1, y.ctypes.data, 1)
    else:
        if beta != 1.0:
            y *= beta
        y += alpha * x
