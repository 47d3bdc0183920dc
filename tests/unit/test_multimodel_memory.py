"""The container's memory limit and use (serve/multimodel/memory.py), read from made-up cgroup trees as the kernel
lays them out (v2 and v1), else /proc/meminfo; and memory given back after a model is unloaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from devkit.project import CONTAINER
from mxnet_byoc.serve import allocator
from mxnet_byoc.serve.multimodel import memory

MIB = 1 << 20
MEMINFO = "MemTotal:       16000000 kB\nMemFree:         1000000 kB\nMemAvailable:    9000000 kB\n"


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_limit_less_inactive_file_pages(tmp_path):
    root = tmp_path / "cgroup"
    write(root / "cgroup.controllers", "cpu memory\n")
    write(root / "memory.max", f"{512 * MIB}\n")
    write(root / "memory.current", f"{300 * MIB}\n")
    write(root / "memory.stat", f"anon {200 * MIB}\ninactive_file {100 * MIB}\n")
    write(tmp_path / "self-cgroup", "0::/\n")
    found = memory.usage(root, tmp_path / "meminfo", tmp_path / "self-cgroup")
    assert (found.limit, found.used, found.free) == (512 * MIB, 200 * MIB, 312 * MIB)
    assert "memory.max" in found.source


def test_cgroup_v2_the_smallest_limit_along_the_path_holds(tmp_path):
    root = tmp_path / "cgroup"
    write(root / "cgroup.controllers", "memory\n")
    write(root / "memory.max", "max\n")
    write(root / "parent" / "memory.max", f"{256 * MIB}\n")
    write(root / "parent" / "child" / "memory.max", "max\n")
    write(root / "parent" / "child" / "memory.current", f"{10 * MIB}\n")
    write(tmp_path / "self-cgroup", "0::/parent/child\n")
    found = memory.usage(root, tmp_path / "meminfo", tmp_path / "self-cgroup")
    assert (found.limit, found.used) == (256 * MIB, 10 * MIB) and "parent/memory.max" in found.source


def test_cgroup_v1_as_docker_mounts_it(tmp_path):
    root = tmp_path / "cgroup"
    write(root / "memory" / "memory.limit_in_bytes", f"{1024 * MIB}\n")
    write(root / "memory" / "memory.usage_in_bytes", f"{400 * MIB}\n")
    write(root / "memory" / "memory.stat", f"cache {150 * MIB}\ntotal_inactive_file {50 * MIB}\n")
    write(tmp_path / "self-cgroup", "9:memory:/docker/0123abcd\n")  # not mounted by that path inside
    found = memory.usage(root, tmp_path / "meminfo", tmp_path / "self-cgroup")
    assert (found.limit, found.used) == (1024 * MIB, 350 * MIB)


def test_without_a_cgroup_limit_the_machines_memory(tmp_path):
    root = tmp_path / "cgroup"
    write(root / "memory" / "memory.limit_in_bytes", "9223372036854771712\n")  # v1's "no limit"
    write(root / "memory" / "memory.usage_in_bytes", f"{400 * MIB}\n")
    write(tmp_path / "meminfo", MEMINFO)
    found = memory.usage(root, tmp_path / "meminfo", tmp_path / "self-cgroup")
    assert (found.limit, found.used) == (16000000 * 1024, 7000000 * 1024) and "MemTotal" in found.source


# Many small objects freed in between others that stay: what allocators keep for later.
FRAGMENTS = """
import json
from mxnet_byoc.serve.multimodel import memory
start = memory.anonymous_bytes()
freed, kept = [], []
for i in range(60000):
    freed.append(bytes(4000) + bytes([i % 256]))
    kept.append(str(i) * 3)
held = memory.anonymous_bytes()
del freed
memory.release()
print(json.dumps({"grown": held - start, "left": memory.anonymous_bytes() - start}))
"""


def test_release_gives_freed_memory_back_under_serves_allocator():
    environ = {**allocator.with_allocator(os.environ), "PYTHONPATH": str(CONTAINER)}
    result = subprocess.run([sys.executable, "-c", FRAGMENTS], env=environ, capture_output=True, text=True,
                            check=True)
    figures = json.loads(result.stdout)
    assert figures["grown"] > 200 * MIB and figures["left"] < 0.2 * figures["grown"], figures
