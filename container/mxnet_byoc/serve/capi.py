"""libmxnet.so's C API, loaded once per process without importing the mxnet Python package (cpredict.py says
why): the one place serving gets it from (cpredict for predictions, network for its softmax head, device to
count GPUs)."""

from __future__ import annotations

import ctypes
import importlib.util
import os
import threading

from . import settings

_lib: ctypes.CDLL | None = None
_lib_lock = threading.Lock()


class InferenceError(RuntimeError):
    """MXNet refused the model or a prediction; the message is MXNet's."""


def library() -> ctypes.CDLL:
    """libmxnet.so, loaded once per process (the mxnet Python package is never imported)."""
    global _lib
    with _lib_lock:
        if _lib is None:
            path = os.environ.get(settings.MXNET_LIBRARY_PATH) or _packaged_library()
            lib = ctypes.CDLL(path, ctypes.RTLD_LOCAL)
            lib.MXGetLastError.restype = ctypes.c_char_p
            # Declared so that plain ints pass as pointers and sizes: this is the per-request path.
            handle, pointer, size = ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint32
            lib.MXPredSetInput.argtypes = [handle, ctypes.c_char_p, pointer, size]
            lib.MXPredForward.argtypes = [handle]
            lib.MXPredGetOutput.argtypes = [handle, size, pointer, size]
            _lib = lib
        return _lib


def _packaged_library() -> str:
    # find_spec locates the package without running its __init__ (which would import all of MXNet).
    spec = importlib.util.find_spec("mxnet")
    if spec is None or not spec.submodule_search_locations:
        raise InferenceError("the mxnet package is not installed and MXNET_LIBRARY_PATH is not set")
    return os.path.join(list(spec.submodule_search_locations)[0], "libmxnet.so")


def check(code: int) -> None:
    """Raises MXNet's last error when a C API call returned non-zero."""
    if code != 0:
        message = library().MXGetLastError() or b"unknown MXNet error"
        raise InferenceError(message.decode(errors="replace").strip())
