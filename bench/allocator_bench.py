#!/usr/bin/env python3
"""Which allocator `serve` preloads (mxnet_byoc/serve/allocator.py): glibc's malloc, jemalloc and tcmalloc, each in
the real `serve` (2 workers) on the same model, measured in the same run.

glibc's malloc is the baseline (`LD_PRELOAD=`: what a process gets with nothing of ours). Printed for each: server
CPU per one-image JSON request under wrk at concurrency 8 and 32 (--rounds alternating runs of --duration seconds;
the median, and the median and range of the per-round ratios to glibc's), then the PSS of the process tree after
that load, after 4 batches of 30,000 float32 images (94 MB each, near batch transform's 100 MB limit), and 10 s
later: what a worker keeps of a large batch.
Usage: .venv/bin/python bench/allocator_bench.py [--model-dir DIR] [--rounds 6] [--duration 3]
"""

from __future__ import annotations

import argparse
import glob
import io
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

import serve_bench
from devkit.servers import Server
from mxnet_byoc.serve import allocator

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
        serve_bench.apt_install(package)
    return sorted(glob.glob(pattern))[0]


def big_batch() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.random.default_rng(0).random((BATCH_IMAGES, 28, 28), dtype=np.float32))
    return buffer.getvalue()


def memory_after_batches(server: Server, body: bytes) -> tuple[int, int, int]:
    """PSS in MiB: now, after BATCHES large batches, and 10 s after them."""
    before = server.pss_kib() // 1024
    for _ in range(BATCHES):
        request = urllib.request.Request(server.url(serve_bench.INVOCATIONS), data=body,
                                         headers={"Content-Type": "application/x-npy"})
        with urllib.request.urlopen(request, timeout=300) as response:
            response.read()
    after = server.pss_kib() // 1024
    time.sleep(10)
    return before, after, server.pss_kib() // 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", type=Path, help="serve this model directory (default: a 1-epoch cnn, trained)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--duration", type=int, default=3)
    args = parser.parse_args()

    wrk = serve_bench.ensure_wrk()
    preload = {name: library(*where) for name, where in ALLOCATORS.items()}
    with tempfile.TemporaryDirectory(prefix="allocator-bench-") as folder:
        work = Path(folder)
        model_dir = args.model_dir or serve_bench.train_model(work / "train", "cnn", 1)
        script, body = serve_bench.one_image_folder(work, model_dir)
        servers = {name: serve_bench.serve_process(work, 2, work / f"{name}.log",
                                                   {"LD_PRELOAD": value, "SAGEMAKER_MAX_PAYLOAD_IN_MB": "100"})
                   for name, value in preload.items()}
        try:
            print(f"model {model_dir}; 2 workers each; {args.rounds} alternating rounds of {args.duration} s; "
                  f"{serve_bench.uptime()}", flush=True)
            for server in servers.values():
                server.wait_loaded()
            cpu: dict[str, dict[int, list[float]]] = {name: {c: [] for c in CONCURRENCY} for name in servers}
            for round_ in range(args.rounds):
                order = list(servers) if round_ % 2 == 0 else list(reversed(servers))
                for c in CONCURRENCY:
                    for name in order:
                        run = serve_bench.run_wrk(wrk, script, servers[name], body, "application/json", c,
                                                  args.duration)
                        cpu[name][c].append(run["cpu_us"])
            batch = big_batch()
            memory = {name: memory_after_batches(server, batch) for name, server in servers.items()}
        finally:
            for server in servers.values():
                server.stop()

    print(f"\n{'allocator':<10} {'LD_PRELOAD':<46} " + " ".join(f"{f'c{c}: CPU us, vs glibc':>32}" for c in CONCURRENCY)
          + f" | PSS MiB: after the load, after {BATCHES} x {BATCH_IMAGES:,} images, 10 s later")
    for name, value in preload.items():
        cells = []
        for c in CONCURRENCY:
            ratios = sorted(ours / glibc for ours, glibc in zip(cpu[name][c], cpu["glibc"][c]))
            cells.append(f"{statistics.median(cpu[name][c]):>6.0f} {statistics.median(ratios):.3f} "
                         f"({ratios[0]:.3f}-{ratios[-1]:.3f})")
        print(f"{name:<10} {value or '(empty)':<46} " + " ".join(f"{cell:>32}" for cell in cells)
              + " | " + " / ".join(map(str, memory[name])))
    print(f"load average at the end: {serve_bench.uptime()}")


if __name__ == "__main__":
    main()
