"""Running a command to completion: its exit code, its output (stdout and stderr as they interleaved) and
how long it took."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import KitError

TAIL = 3000  # characters of output a failure message quotes


@dataclass
class Finished:
    returncode: int
    log: str
    seconds: float


def run(cmd: Sequence[str | Path], timeout: float | None = 900, env: Mapping[str, str] | None = None,
        on_timeout: Callable[[], None] | None = None, **kw) -> Finished:
    """`cmd` to completion; on a timeout `on_timeout` runs (to remove what the command left) and
    subprocess.TimeoutExpired is raised."""
    started = time.monotonic()
    try:
        result = subprocess.run([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                timeout=timeout, env=None if env is None else dict(env), **kw)
    except subprocess.TimeoutExpired:
        if on_timeout is not None:
            on_timeout()
        raise
    return Finished(result.returncode, result.stdout, time.monotonic() - started)


def sh(*cmd: str | Path, timeout: float = 120, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """A command with its stdout and stderr captured apart; KitError with both when it fails and `check`."""
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)
    if check and result.returncode != 0:
        raise KitError(f"{' '.join(map(str, cmd))} exited {result.returncode}:\n{result.stdout[-TAIL:]}\n"
                       f"{result.stderr[-TAIL:]}")
    return result
