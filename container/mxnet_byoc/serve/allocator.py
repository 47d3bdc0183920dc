"""The memory allocator of `serve`'s Python processes (gunicorn's master and workers; nginx runs without it):
jemalloc in place of glibc's malloc, when the machine has it.

Why: a request allocates and frees many small objects (JSON, numpy and NDArray headers, MXNet's operator
state), which jemalloc's per-thread caches make cheaper than glibc's malloc, while it keeps about as much of a large
batch's memory as glibc does (`bench/serve_bench.py --mode allocator` measures both against glibc's malloc and
tcmalloc, which is a little faster but keeps much of a large batch per worker for good). MXNet's build has an
option to link either (USE_JEMALLOC, USE_GPERFTOOLS); the wheels on PyPI link neither. The images install
libjemalloc2.

A library in LD_PRELOAD is loaded only when a process starts, so `serve` starts itself again, once, with it
set; an LD_PRELOAD already in the environment, even an empty one, is the user's choice and kept.
"""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Mapping

LD_PRELOAD = "LD_PRELOAD"
# Debian's multiarch folders (amd64, arm64) and the usual lib64 folder of other distributions.
LIBRARY_PATTERNS = ("/usr/lib/*-linux-gnu/libjemalloc.so.2", "/usr/lib64/libjemalloc.so.2")


def library_path() -> str | None:
    """The first allocator library found on this machine, or None."""
    for pattern in LIBRARY_PATTERNS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def with_allocator(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` with the allocator in LD_PRELOAD, unless LD_PRELOAD is set already (even empty: the user's
    choice) or this machine has no such library."""
    library = None if LD_PRELOAD in environ else library_path()  # no search in the restarted process
    if library is None:
        return dict(environ)
    return {**environ, LD_PRELOAD: library}


def restart_with_allocator() -> None:
    """Replace this process by itself with the allocator preloaded, unless with_allocator leaves the environment
    as it is. The PID stays, so SageMaker's signals still reach it; sys.orig_argv keeps the interpreter's options
    (and `-c`'s program)."""
    environ = with_allocator(os.environ)
    if environ.get(LD_PRELOAD) != os.environ.get(LD_PRELOAD):
        os.execve(sys.executable, sys.orig_argv, environ)
