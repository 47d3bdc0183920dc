"""Where a serving worker computes: a GPU when the machine has one, else the CPU.

Every worker holds its own copy of the model, so on a machine with several GPUs the workers are spread
over them: the server gives each worker a slot (0, 1, ...), and slot k computes on GPU k modulo the count.
The count comes from libmxnet.so through ctypes, so asking costs no import of the mxnet package.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from dataclasses import dataclass

from .capi import InferenceError, check, library

log = logging.getLogger(__name__)

CPU_TYPE, GPU_TYPE = 1, 2  # MXNet's device type codes (Context::DeviceType)

_slot = 0  # this worker's slot, set by the server after the fork


@dataclass(frozen=True)
class Device:
    gpu_id: int | None = None  # None: the CPU

    @property
    def dev_type(self) -> int:
        """MXNet's device type code, as the C predict API takes it."""
        return CPU_TYPE if self.gpu_id is None else GPU_TYPE

    @property
    def dev_id(self) -> int:
        return 0 if self.gpu_id is None else self.gpu_id

    def mx_context(self):  # -> mxnet.Context; imports the mxnet package
        import mxnet as mx

        return mx.cpu() if self.gpu_id is None else mx.gpu(self.gpu_id)

    def __str__(self) -> str:
        return "cpu(0)" if self.gpu_id is None else f"gpu({self.gpu_id})"


CPU = Device()


@functools.lru_cache(maxsize=1)
def gpu_count() -> int:
    """GPUs that MXNet sees; 0 with a CPU build of MXNet, or a CUDA build on a machine without a GPU."""
    count = ctypes.c_int(0)
    try:
        check(library().MXGetGPUCount(ctypes.byref(count)))
    except (OSError, AttributeError, InferenceError) as e:
        log.warning("cannot count GPUs (%s): serving on the CPU", e)
        return 0
    return max(count.value, 0)


def set_worker_slot(slot: int) -> None:
    """Called once in each worker, before it loads its model."""
    global _slot
    _slot = slot


def current() -> Device:
    """This worker's device: GPU (slot mod count) when there is one, else the CPU."""
    count = gpu_count()
    return Device(_slot % count) if count else Device()
