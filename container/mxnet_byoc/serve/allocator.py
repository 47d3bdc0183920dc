"""The workers' memory allocator: gperftools' tcmalloc in place of glibc's malloc, when the machine has it.

Why: a request through a user's script allocates and frees many small objects (JSON, numpy and NDArray headers,
MXNet's operator state); tcmalloc's per-thread caches make that cheaper than glibc's malloc, and MXNet's own
builds link it when they find it (USE_GPERFTOOLS). The images install it (Debian's libtcmalloc-minimal4).
A library named in LD_PRELOAD is loaded only when a process starts, so `serve` starts itself again, once,
with it set; an LD_PRELOAD already in the environment, even an empty one, is the user's choice and kept.
"""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Mapping

LD_PRELOAD = "LD_PRELOAD"
# Debian's multiarch folders (amd64, arm64) and the usual lib64 folder of other distributions.
TCMALLOC_PATTERNS = ("/usr/lib/*-linux-gnu/libtcmalloc_minimal.so.4", "/usr/lib64/libtcmalloc_minimal.so.4")


def tcmalloc_path() -> str | None:
    """The first tcmalloc library found on this machine, or None."""
    for pattern in TCMALLOC_PATTERNS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def with_tcmalloc(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` with tcmalloc in LD_PRELOAD, unless LD_PRELOAD is set already (even empty: the user's choice)
    or this machine has no tcmalloc."""
    library = tcmalloc_path()
    if library is None or LD_PRELOAD in environ:
        return dict(environ)
    return {**environ, LD_PRELOAD: library}


def restart_with_tcmalloc() -> None:
    """Replace this process by itself with tcmalloc preloaded, unless with_tcmalloc leaves the environment as
    it is. The PID stays, so SageMaker's signals still reach it; sys.orig_argv keeps the interpreter's options
    (and `-c`'s program)."""
    environ = with_tcmalloc(os.environ)
    if environ.get(LD_PRELOAD) != os.environ.get(LD_PRELOAD):
        os.execve(sys.executable, sys.orig_argv, environ)
