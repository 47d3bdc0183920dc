"""Start-up and memory: seconds from starting `serve` to its first correct prediction (and, for the built-in
models, where they go, in one process without gunicorn), and the PSS of the serving process tree after load
(one-image JSON at concurrency 32 and both 1,000-image batches, one request per worker, --duration s each)."""

from __future__ import annotations

import statistics
import time

from figures import Figure, below

from .rig import Bench, Subject, first_answer, python, run_wrk, serve_process, worker_environ

TARGET_STARTUP_S = 0.5
TARGET_PSS_MIB = 200

# What each worker does before its first answer, timed in one process without gunicorn.
STARTUP_PHASES = """
import sys, time
marks = [time.time()]
from mxnet_byoc.serve import capi, network, server
marks.append(time.time())
capi.library()
marks.append(time.time())
model = network.Model(sys.argv[1])
marks.append(time.time())
model.warm_up()
marks.append(time.time())
print(*marks)
"""
STARTUP_PHASE_NAMES = ("interpreter", "imports (gunicorn, Flask, numpy, the app)", "libmxnet.so",
                       "model bound at 4 batch sizes", "warm-up predictions")


def phases(subject: Subject) -> list[float]:
    """Seconds spent in each of STARTUP_PHASE_NAMES, from launching the interpreter."""
    started = time.time()
    out = python(STARTUP_PHASES, subject.model_dir, env=worker_environ(**subject.env), what="the start-up phases")
    marks = [started, *map(float, out.split())]
    return [later - earlier for earlier, later in zip(marks, marks[1:])]


def run(bench: Bench) -> list[Figure]:
    return [figure for subject in bench.subjects for figure in measure(bench, subject)]


def measure(bench: Bench, subject: Subject) -> list[Figure]:
    args = bench.args
    print(f"\n=== {subject.label} ===", flush=True)
    bench.serve(subject, "first.log").stop()  # the first start finds the digit the timed ones wait for
    startups = []
    for _ in range(3):
        server = serve_process(subject.base, args.workers, bench.work / f"{subject.name}-startup.log", subject.env)
        try:
            startups.append(first_answer(server, subject.digit, subject.digit_label)[0])
        finally:
            server.stop()
    print(f"start of `serve` to first correct prediction: median {statistics.median(startups):.2f} s "
          f"(runs: {', '.join(f'{s:.2f}' for s in startups)})")
    if subject.built_in:
        timed = [phases(subject) for _ in range(3)]
        print("  the same work in one process without gunicorn (medians of 3): " + ", ".join(
            f"{name} {statistics.median(p[i] for p in timed):.2f} s" for i, name in enumerate(STARTUP_PHASE_NAMES))
            + f"; in all {statistics.median(sum(p) for p in timed):.2f} s")

    server = bench.serve(subject, "memory.log")
    try:
        body = bench.body(f"{subject.name}-one.json", subject.digit)
        for path, content_type, connections in ((body, "application/json", 32),
                                                (bench.batches["uint8"], "application/x-npy", args.workers),
                                                (bench.batches["float32"], "application/x-npy", args.workers)):
            run_wrk(bench.wrk, bench.script, server, path, content_type, connections, args.duration)
        pss = server.pss_kib() / 1024
    finally:
        server.stop()
    print(f"PSS of the serving process tree ({args.workers} workers, after the load): {pss:.0f} MiB")
    limits = (TARGET_STARTUP_S, TARGET_PSS_MIB) if subject.built_in else (None, None)
    return [below(f"serving.startup.{subject.name}.seconds", f"{subject.name}: start of serve to the first correct "
                  "prediction", statistics.median(startups), "s", limits[0]),
            below(f"serving.startup.{subject.name}.pss", f"{subject.name}: PSS of the serving process tree with "
                  f"{args.workers} workers", pss, "MiB", limits[1])]
