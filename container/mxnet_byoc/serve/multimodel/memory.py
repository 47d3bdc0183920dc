"""How much memory the container may use and uses, and giving a model's freed memory back to it.

The limit is the container's cgroup limit (cgroup v2 `memory.max`, v1 `memory.limit_in_bytes`, the smallest along
this process's cgroup path, as the kernel enforces the smallest), else the machine's MemTotal. What counts as used
is what the kernel cannot take back without killing: the cgroup's charge less its inactive file pages (as `docker
stats` counts), else MemTotal less MemAvailable.

A model's bytes in one process are measured as the growth of that process's anonymous resident memory while it
loads (`anonymous_bytes` before and after): its weights, bindings and Python objects, none of which another
process shares.

glibc's malloc and jemalloc (allocator.py) both keep freed memory for later: `release` hands it back to the
system at once after a model is unloaded, so that the next load's check sees it free.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
MEMINFO = Path("/proc/meminfo")
UNLIMITED = 1 << 62  # cgroup v1 writes "no limit" as a number near 2**63


@dataclass(frozen=True)
class Usage:
    limit: int  # bytes the container may use
    used: int  # bytes it uses that the kernel cannot reclaim
    source: str  # where the limit comes from, for messages

    @property
    def free(self) -> int:
        return max(0, self.limit - self.used)


def usage(root: Path = CGROUP_ROOT, meminfo: Path = MEMINFO, cgroup_file: Path = Path("/proc/self/cgroup")) -> Usage:
    """The container's memory limit and use now."""
    for reader in (_cgroup_v2, _cgroup_v1):
        found = reader(root, cgroup_file)
        if found is not None:
            return found
    info = _meminfo(meminfo)
    total = info["MemTotal"]
    return Usage(total, total - info.get("MemAvailable", info.get("MemFree", 0)), "the machine's memory (MemTotal)")


def _cgroup_paths(root: Path, cgroup_file: Path, controller: str | None) -> list[Path]:
    """This process's cgroup folder under `root` and its ancestors, deepest first; just `root` where the path
    is not mounted there (a container sees its own cgroup at the root of the mount)."""
    relative = None
    try:
        for line in cgroup_file.read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if (controller is None and controllers == "") or (controller and controller in controllers.split(",")):
                relative = path
    except (OSError, ValueError):
        pass
    paths = []
    if relative and relative != "/":
        folder = root / relative.lstrip("/")
        while folder != root and folder.is_dir():
            paths.append(folder)
            folder = folder.parent
    paths.append(root)
    return paths


def _cgroup_v2(root: Path, cgroup_file: Path) -> Usage | None:
    if not (root / "cgroup.controllers").is_file():
        return None
    limits = []
    for folder in _cgroup_paths(root, cgroup_file, None):
        value = _read(folder / "memory.max")
        if value is not None and value != "max":
            limits.append((int(value), folder))
    if not limits:
        return None
    limit, folder = min(limits)
    where = _cgroup_paths(root, cgroup_file, None)[0]
    current = _read(where / "memory.current")
    if current is None:
        return None
    stat = _stat(where / "memory.stat")
    return Usage(limit, int(current) - stat.get("inactive_file", 0), f"the cgroup limit ({folder / 'memory.max'})")


def _cgroup_v1(root: Path, cgroup_file: Path) -> Usage | None:
    base = root / "memory"
    if not (base / "memory.limit_in_bytes").is_file():
        return None
    folders = _cgroup_paths(base, cgroup_file, "memory")
    limits = []
    for folder in folders:
        value = _read(folder / "memory.limit_in_bytes")
        if value is not None and int(value) < UNLIMITED:
            limits.append((int(value), folder))
    if not limits:
        return None
    limit, folder = min(limits)
    current = _read(folders[0] / "memory.usage_in_bytes")
    if current is None:
        return None
    stat = _stat(folders[0] / "memory.stat")
    inactive = stat.get("total_inactive_file", stat.get("inactive_file", 0))
    return Usage(limit, int(current) - inactive, f"the cgroup limit ({folder / 'memory.limit_in_bytes'})")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _stat(path: Path) -> dict[str, int]:
    values = {}
    for line in (_read(path) or "").splitlines():
        name, _, value = line.partition(" ")
        if value.isdigit():
            values[name] = int(value)
    return values


def _meminfo(path: Path) -> dict[str, int]:
    values = {}
    for line in path.read_text().splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[name] = int(parts[0]) * 1024
    return values


def anonymous_bytes() -> int:
    """This process's anonymous resident memory (RssAnon): what its own allocations hold."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


def release() -> None:
    """Give freed memory back to the system now: jemalloc's arenas purged when jemalloc is the allocator, else
    glibc's malloc_trim."""
    process = ctypes.CDLL(None)
    mallctl = getattr(process, "mallctl", None)
    if mallctl is not None:
        mallctl(b"arena.4096.purge", None, None, None, ctypes.c_size_t(0))  # 4096: MALLCTL_ARENAS_ALL
        return
    trim = getattr(process, "malloc_trim", None)
    if trim is not None:
        trim(ctypes.c_size_t(0))


def megabytes(count: int) -> str:
    return f"{count / (1 << 20):.0f} MiB"
