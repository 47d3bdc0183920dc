"""Devices, engine and threads: decided once, before MXNet is imported, and handed to the training loop.

MXNet reads its engine type and OpenMP's thread count from the environment when it is imported, so
`resolve` (standard library only) runs first and `apply` puts its choices into the environment; after
the import, `Runtime.contexts()` turns the device list into MXNet contexts.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .environment import ContractError
from .hyperparameters import HyperparameterError, Hyperparameters

log = logging.getLogger(__name__)

CONTEXTS = "MXNET_BYOC_CONTEXTS"  # e.g. "cpu(0),cpu(1)" or "gpu(0),gpu(1)"; wins over the hyperparameter
ENGINE = "MXNET_ENGINE_TYPE"
THREADS = "OMP_NUM_THREADS"
NAIVE = "NaiveEngine"
GPU_DEVICE_FILE = Path("/dev/nvidia0")
QUIET = ("MXNET_STORAGE_FALLBACK_LOG_VERBOSE", "MXNET_SUBGRAPH_VERBOSE")  # off unless the caller set them

_DEVICE = re.compile(r"^\s*(cpu|gpu)\s*\(\s*(\d+)\s*\)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Device:
    kind: str  # "cpu" or "gpu"
    index: int

    def __str__(self) -> str:
        return f"{self.kind}({self.index})"


def parse_devices(spec: str) -> tuple[Device, ...]:
    """'cpu(0),cpu(1)' or 'gpu(0), gpu(1)' -> devices; ValueError naming the bad part."""
    devices = []
    for part in spec.split(","):
        if not part.strip():
            continue
        m = _DEVICE.match(part)
        if not m:
            raise ValueError(f"cannot read device {part.strip()!r}: expected cpu(N) or gpu(N), comma-separated")
        devices.append(Device(m.group(1).lower(), int(m.group(2))))
    if not devices:
        raise ValueError(f"no device in {spec!r}")
    return tuple(devices)


@dataclass(frozen=True)
class Runtime:
    devices: tuple[Device, ...]  # empty: every GPU MXNet sees, else the CPU
    source: str  # where `devices` came from, for messages
    engine: str | None  # MXNET_ENGINE_TYPE; None leaves MXNet's default (the threaded engine)
    threads: str  # OMP_NUM_THREADS

    @property
    def naive_engine(self) -> bool:
        """Every MXNet call has finished when it returns: the host-memory fast path (hostpath.py) is safe."""
        return self.engine == NAIVE

    def environment(self) -> dict[str, str]:
        """What MXNet must find in the environment when it is imported."""
        env = {THREADS: self.threads}
        if self.engine:
            env[ENGINE] = self.engine
        return env

    def describe(self) -> str:
        devices = ",".join(map(str, self.devices)) or "every GPU, else the CPU"
        return f"devices {devices} ({self.source}), engine {self.engine or 'threaded'}, OpenMP threads {self.threads}"

    def contexts(self) -> list[Any]:
        """The devices as MXNet contexts (imports MXNet): the listed ones, else every GPU, else the CPU."""
        import mxnet as mx

        if self.devices:
            return [mx.Context(d.kind, d.index) for d in self.devices]
        try:
            count = mx.context.num_gpus()
        except mx.base.MXNetError as e:  # a CUDA build without a usable driver
            log.warning("no usable GPU (%s): training on the CPU", str(e).splitlines()[0][:200])
            count = 0
        if count == 0 and mx.runtime.Features().is_enabled("CUDA"):
            log.warning("this is the GPU image but no GPU is visible: training on the CPU, which is much slower")
        return [mx.gpu(i) for i in range(count)] or [mx.cpu()]


def resolve(hps: Hyperparameters, distributed: bool, environ: Mapping[str, str] = os.environ,
            gpu_present: bool | None = None) -> Runtime:
    """Devices from MXNET_BYOC_CONTEXTS, else the `contexts` hyperparameter, else detection; the engine and
    threads from them. A device list that cannot be read fails naming where it came from."""
    if environ.get(CONTEXTS):
        spec, source, error = environ[CONTEXTS], CONTEXTS, ContractError
    elif hps.contexts:
        spec, source, error = hps.contexts, "hyperparameter 'contexts'", HyperparameterError
    else:
        spec, source, error = "", "detected", None
    try:
        devices = parse_devices(spec) if spec else ()
    except ValueError as e:
        raise error(f"{source}: {e}") from e
    if gpu_present is None:
        gpu_present = GPU_DEVICE_FILE.exists()
    wants_gpu = any(d.kind == "gpu" for d in devices) or (not devices and gpu_present)
    # On the CPU a small network's step is mostly framework overhead; the naive (synchronous) engine cuts it.
    # GPUs and parameter servers need the threaded engine's asynchrony. A caller's own choice stands.
    engine = environ.get(ENGINE) or (NAIVE if not wants_gpu and not distributed else None)
    # Every core: a training instance is not shared, and the cnn's and the mlp's ops shorten with more threads
    # (the training bench runs this default). Where other busy processes share the cores, OpenMP's spinning
    # barriers make several threads SLOWER than one: set OMP_NUM_THREADS=1 there (README, "Devices").
    threads = environ.get(THREADS) or str(len(os.sched_getaffinity(0)))
    return Runtime(devices, source, engine, threads)


def apply(runtime: Runtime) -> None:
    """Before `import mxnet`: it reads these once, when it is imported."""
    os.environ.update(runtime.environment())
    for name in QUIET:
        os.environ.setdefault(name, "0")
