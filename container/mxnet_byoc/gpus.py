"""Whether the GPU image's MXNet build can run on the GPUs it is given, checked before `train` or `serve` works.

A CUDA library runs a kernel on a GPU only if it carries SASS (machine code) for that GPU's architecture,
or PTX that the driver can compile for it: SASS for sm_XY runs on compute capability X.Y' with Y' >= Y
(same major), PTX for compute_XY on any compute capability >= X.Y. MXNet's kernels in the image are
whatever its libmxnet.so carries, which the image's build reads from the library itself (fatbin.py) and
records in RECORD. Where a GPU matches none of it, the first operator would fail with CUDA error 209 ("no
kernel image is available for execution on the device") after the data is downloaded; this check says so
at start, naming the GPU and the SageMaker instance families that work. The CPU image has no RECORD and
is not checked. ALLOW_VARIABLE=1 makes it a warning instead, for a build the record misjudges.

The GPUs are read from the driver API (libcuda.so.1, through ctypes, never through MXNet) in a child
process: CUDA initialised in `serve`'s master would be unusable in the workers it forks, and a driver that
hangs or crashes takes only the child with it.

INSTANCE_FAMILIES is the one table of SageMaker's GPU instance families; byoctl warns from it too, so this
module stays standard library only.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ReasonError

RECORD = Path("/opt/mxnet-byoc/cuda-archs.json")
ALLOW_VARIABLE = "MXNET_BYOC_ALLOW_UNSUPPORTED_GPU"
PROBE_TIMEOUT_S = 120.0  # cuInit on eight GPUs without the persistence daemon takes seconds, not minutes
DRIVER = "libcuda.so.1"

_CUDA_ERROR_NO_DEVICE = 100
_ATTRIBUTE_MAJOR = 75  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
_ATTRIBUTE_MINOR = 76


@dataclass(frozen=True)
class Family:
    """A SageMaker instance family (ml.<name>.*) and the NVIDIA GPU its instances have."""

    name: str
    gpu: str
    capability: tuple[int, int]


# NVIDIA GPU families of SageMaker's training and hosting instance types, with each GPU's compute
# capability (AWS's instance type pages; NVIDIA's compute capability table).
INSTANCE_FAMILIES = (
    Family("p2", "K80", (3, 7)),
    Family("p3", "V100", (7, 0)),
    Family("p3dn", "V100", (7, 0)),
    Family("g4dn", "T4", (7, 5)),
    Family("p4d", "A100", (8, 0)),
    Family("p4de", "A100", (8, 0)),
    Family("g5", "A10G", (8, 6)),
    Family("g6", "L4", (8, 9)),
    Family("g6e", "L40S", (8, 9)),
    Family("p5", "H100", (9, 0)),
    Family("p5e", "H200", (9, 0)),
    Family("p5en", "H200", (9, 0)),
    Family("p6-b200", "B200", (10, 0)),
    Family("p6e-gb200", "GB200", (10, 0)),
    Family("p6-b300", "B300", (10, 3)),
    Family("g7", "RTX PRO 4500 Blackwell", (12, 0)),
    Family("g7e", "RTX PRO 6000 Blackwell", (12, 0)),
)


@dataclass(frozen=True)
class Archs:
    """The GPU code a library carries: SASS and PTX architectures as numbers (86 for sm_86 / compute_86)."""

    sass: tuple[int, ...]
    ptx: tuple[int, ...] = ()

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Archs:
        try:
            return cls(tuple(sorted(int(a) for a in record["sass"])), tuple(sorted(int(a) for a in record["ptx"])))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not a record of GPU architectures (sass, ptx): {e}") from e

    def runs_on(self, capability: tuple[int, int]) -> bool:
        sass = (divmod(a, 10) for a in self.sass)
        return (any(major == capability[0] and minor <= capability[1] for major, minor in sass)
                or any(divmod(a, 10) <= capability for a in self.ptx))

    def describe(self) -> str:
        """"SASS for sm_80, sm_86 and no PTX", as cuobjdump would name them."""
        sass = f"SASS for {', '.join(f'sm_{a}' for a in self.sass)}" if self.sass else "no SASS"
        ptx = f"PTX for {', '.join(f'compute_{a}' for a in self.ptx)}" if self.ptx else "no PTX"
        return f"{sass} and {ptx}"


# What the GPU image's pinned build (mxnet-cu112 1.9.1, docker/requirements-gpu.lock) carries, for byoctl,
# which never sees the image: the image's own RECORD says the same (tests/container/test_gpu_support.py).
PINNED_BUILD = Archs(sass=(50, 60, 70, 80, 86), ptx=())


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    capability: tuple[int, int]

    def describe(self) -> str:
        return f"{self.name} (compute capability {self.capability[0]}.{self.capability[1]})"


class UnsupportedGpu(ReasonError):
    """A visible GPU that the image's MXNet build has no code for."""


class ProbeError(Exception):
    """The driver could not be asked (an error, a hang); the check is skipped with a warning."""


def family_of(instance_type: str) -> Family | None:
    """The GPU family of a SageMaker instance type (ml.p5.48xlarge -> p5); None for one without a GPU."""
    name = instance_type.removeprefix("ml.").split(".")[0]
    return next((f for f in INSTANCE_FAMILIES if f.name == name), None)


def working_families(archs: Archs) -> list[Family]:
    return [f for f in INSTANCE_FAMILIES if archs.runs_on(f.capability)]


def _family_list(families: list[Family]) -> str:
    """ml.p3/p3dn (V100), ...: families of one GPU together."""
    by_gpu: dict[str, list[str]] = {}
    for f in families:
        by_gpu.setdefault(f.gpu, []).append(f.name)
    return ", ".join(f"ml.{'/'.join(names)} ({gpu})" for gpu, names in by_gpu.items())


def reason(unsupported: list[Gpu], archs: Archs) -> str:
    """One line (SageMaker shows the first 1024 characters of a failure): the GPUs, the build, what works."""
    models: dict[str, int] = {}
    for gpu in unsupported:
        models[gpu.describe()] = models.get(gpu.describe(), 0) + 1
    gpus = ", ".join(f"{count} x {model}" if count > 1 else model for model, count in models.items())
    refused = [f for f in INSTANCE_FAMILIES if not archs.runs_on(f.capability)
               and any(f.capability == g.capability for g in unsupported)]
    return (f"this GPU image's MXNet build cannot run on {gpus}: its libmxnet.so has {archs.describe()}, so "
            "every GPU operator would fail with CUDA error 209 (no kernel image is available for execution on "
            f"the device). Instance families whose GPUs it runs: {_family_list(working_families(archs))}"
            + (f"; not {_family_list(refused)}" if refused else "")
            + f". Set {ALLOW_VARIABLE}=1 to try anyway.")


def instance_warning(instance_type: str, archs: Archs = PINNED_BUILD) -> str | None:
    """What byoctl says before it starts a job or an endpoint on instances whose GPUs the image cannot run."""
    family = family_of(instance_type)
    if family is None or archs.runs_on(family.capability):
        return None
    major, minor = family.capability
    return (f"{instance_type} has NVIDIA {family.gpu} GPUs (compute capability {major}.{minor}), which the GPU "
            f"image's MXNet build cannot run ({archs.describe()}): `train` and `serve` in it stop at start with "
            f"that reason. Instance families whose GPUs it runs: {_family_list(working_families(archs))}; the "
            "CPU image runs anywhere, on the CPU (docs/gpus.md).")


def read_record(path: Path) -> Archs | None:
    """The image's record of its MXNet build; None where there is none (the CPU image)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return Archs.from_record(json.loads(text))


def read_gpus(library: str = DRIVER) -> list[Gpu] | None:
    """Each visible GPU (CUDA_VISIBLE_DEVICES applies), from the driver API; None where there is no driver.
    Calls cuInit: run it in a process that will not fork CUDA users (probe() runs it in a child)."""
    try:
        cuda = ctypes.CDLL(library)
    except OSError:
        return None

    def call(function: str, *args: Any) -> None:
        result = getattr(cuda, function)(*args)
        if result != 0:
            raise ProbeError(f"{function} failed with CUDA error {result}")

    result = cuda.cuInit(0)
    if result == _CUDA_ERROR_NO_DEVICE:
        return []
    if result != 0:
        raise ProbeError(f"cuInit failed with CUDA error {result}")
    count = ctypes.c_int()
    call("cuDeviceGetCount", ctypes.byref(count))
    gpus = []
    for index in range(count.value):
        device, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        name = ctypes.create_string_buffer(256)
        call("cuDeviceGet", ctypes.byref(device), index)
        call("cuDeviceGetName", name, len(name), device)
        call("cuDeviceGetAttribute", ctypes.byref(major), _ATTRIBUTE_MAJOR, device)
        call("cuDeviceGetAttribute", ctypes.byref(minor), _ATTRIBUTE_MINOR, device)
        gpus.append(Gpu(index, name.value.decode(errors="replace"), (major.value, minor.value)))
    return gpus


def probe(timeout_s: float = PROBE_TIMEOUT_S, command: Sequence[str] = ()) -> list[Gpu] | None:
    """read_gpus() in a child process (`command`, by default `python -m mxnet_byoc.gpus`). Raises ProbeError."""
    try:
        child = subprocess.run(list(command) or [sys.executable, "-m", __name__], capture_output=True, text=True,
                               timeout=timeout_s)
    except subprocess.TimeoutExpired as e:
        raise ProbeError(f"the CUDA driver did not answer within {timeout_s:.0f} s") from e
    if child.returncode != 0:
        last = (child.stderr.strip().splitlines() or [""])[-1]
        raise ProbeError(f"the driver probe exited with {child.returncode}: {last}")
    answer = json.loads(child.stdout)
    if "error" in answer:
        raise ProbeError(answer["error"])
    if answer["gpus"] is None:
        return None
    return [Gpu(g["index"], g["name"], tuple(g["capability"])) for g in answer["gpus"]]


def _allowed() -> bool:
    return os.environ.get(ALLOW_VARIABLE, "").strip().lower() in ("1", "true", "yes")


def _say(message: str) -> None:
    # To stderr directly: `serve` checks before its logging is set up, and both programs' logs keep stderr.
    print(f"GPU check: {message}", file=sys.stderr, flush=True)


def require_supported(record: Path | None = None) -> list[Gpu]:
    """Raise UnsupportedGpu when a visible GPU is one the image's MXNet build cannot run on. Silent without
    a record (the CPU image), without a driver (MXNet's import reports that) or without a GPU. The visible GPUs
    ([] in those cases)."""
    record = record or RECORD
    try:
        archs = read_record(record)
    except (OSError, ValueError) as e:
        _say(f"skipped: the record {record} cannot be read: {e}")
        return []
    if archs is None:
        return []
    try:
        gpus = probe()
    except (ProbeError, ValueError, KeyError, TypeError) as e:
        _say(f"skipped: {e}")
        return []
    if not gpus:
        return []
    unsupported = [g for g in gpus if not archs.runs_on(g.capability)]
    if not unsupported:
        _say(f"{len(gpus)} GPU(s), each runs this image's MXNet build ({archs.describe()}): "
             + ", ".join(sorted({g.describe() for g in gpus})))
        return gpus
    why = reason(unsupported, archs)
    if _allowed():
        _say(f"{ALLOW_VARIABLE} is set, so going on although {why}")
        return gpus
    raise UnsupportedGpu(why)


def _probe_main() -> int:
    try:
        gpus = read_gpus()
        answer: dict[str, Any] = {"gpus": None if gpus is None else [
            {"index": g.index, "name": g.name, "capability": list(g.capability)} for g in gpus]}
    except (ProbeError, AttributeError) as e:  # AttributeError: a libcuda.so.1 without these functions
        answer = {"error": str(e)}
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(_probe_main())
