"""Which allocator `serve` preloads (mxnet_byoc/serve/allocator.py): glibc's malloc, jemalloc and tcmalloc, each in
the real `serve` (--workers) on the same model, measured in the same run.

glibc's malloc is the baseline (`LD_PRELOAD=`: what a process gets with nothing of ours). Printed for each: server
CPU per one-image JSON request at concurrency 8 and 32 (the median, and the median and range of the per-round
ratios to glibc's), then the PSS of the process tree after that load, after 4 batches of 30,000 float32 images
(94 MB each, near batch transform's 100 MB limit), and 10 s later: what a worker keeps of a large batch.
"""

from __future__ import annotations

import glob
import statistics
import time

import numpy as np

from devkit import bodies
from devkit.servers import Server
from figures import Figure, uptime
from mxnet_byoc.serve import allocator

from .rig import INVOCATIONS, Bench, apt_install, post, serve_process

ALLOCATORS = {  # name: (a glob for the library, Debian's package); glibc's is the one every process has
    "glibc": (None, None),
    "jemalloc": (allocator.LIBRARY_PATTERNS[0], "libjemalloc2"),  # serve's own
    "tcmalloc": ("/usr/lib/*-linux-gnu/libtcmalloc_minimal.so.4", "libtcmalloc-minimal4"),
}
BATCH_IMAGES = 30_000
BATCHES = 4
CONCURRENCY = (8, 32)


def library(pattern: str | None, package: str | None) -> str:
    """LD_PRELOAD's value for an allocator: its library (installed with apt-get when missing), or "" for glibc."""
    if pattern is None or package is None:
        return ""
    if not glob.glob(pattern):
        apt_install(package)
    return sorted(glob.glob(pattern))[0]


def memory_after_batches(server: Server, body: bytes) -> tuple[int, int, int]:
    """PSS in MiB: now, after BATCHES large batches, and 10 s after them."""
    before = server.pss_kib() // 1024
    for _ in range(BATCHES):
        status, answer = post(server.url(INVOCATIONS), body, "application/x-npy", timeout=300)
        if status != 200:
            raise SystemExit(f"a large batch got {status}: {answer[:300]!r}")
    after = server.pss_kib() // 1024
    time.sleep(10)
    return before, after, server.pss_kib() // 1024


def run(bench: Bench) -> list[Figure]:
    args = bench.args
    preload = {name: library(*where) for name, where in ALLOCATORS.items()}
    base, body = bench.one_image_folder("allocator")
    servers = {name: serve_process(base, args.workers, bench.work / f"allocator-{name}.log",
                                   {"LD_PRELOAD": value, "SAGEMAKER_MAX_PAYLOAD_IN_MB": "100"})
               for name, value in preload.items()}
    try:
        print(f"model {bench.model_dir()}; {args.workers} workers each; {args.rounds} alternating rounds of "
              f"{args.duration} s; {uptime()}", flush=True)
        for server in servers.values():
            server.wait_loaded()
        runs = bench.alternate(list(servers.values()), body, CONCURRENCY)
        batch = bodies.npy(np.random.default_rng(0).random((BATCH_IMAGES, 28, 28), dtype=np.float32))
        memory = {name: memory_after_batches(server, batch) for name, server in servers.items()}
    finally:
        bench.stop(list(servers.values()))

    print(f"\n{'allocator':<10} {'LD_PRELOAD':<46} " + " ".join(f"{f'c{c}: CPU us, vs glibc':>32}" for c in CONCURRENCY)
          + f" | PSS MiB: after the load, after {BATCHES} x {BATCH_IMAGES:,} images, 10 s later")
    figures = []
    for i, (name, value) in enumerate(preload.items()):
        cells = []
        for c in CONCURRENCY:
            cpu, glibc = [r["cpu_us"] for r in runs[c][i]], [r["cpu_us"] for r in runs[c][0]]
            ratios = sorted(ours / theirs for ours, theirs in zip(cpu, glibc))
            cells.append(f"{statistics.median(cpu):>6.0f} {statistics.median(ratios):.3f} "
                         f"({ratios[0]:.3f}-{ratios[-1]:.3f})")
            if name != "glibc":
                figures.append(Figure(f"serving.allocator.{name}.cpu.c{c}", f"{name}: server CPU per one-image "
                                      f"request at concurrency {c}", f"{statistics.median(cpu):.0f} us",
                                      f"glibc's malloc {statistics.median(glibc):.0f} us", statistics.median(ratios)))
        print(f"{name:<10} {value or '(empty)':<46} " + " ".join(f"{cell:>32}" for cell in cells)
              + " | " + " / ".join(map(str, memory[name])))
        if name != "glibc":
            figures.append(Figure(f"serving.allocator.{name}.pss", f"{name}: PSS 10 s after {BATCHES} batches of "
                                  f"{BATCH_IMAGES:,} float32 images", f"{memory[name][2]} MiB",
                                  f"glibc's malloc {memory['glibc'][2]} MiB", memory[name][2] / memory["glibc"][2]))
    print(f"load average at the end: {uptime()}")
    return figures
