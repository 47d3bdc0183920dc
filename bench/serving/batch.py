"""1,000-image application/x-npy batches (uint8 and float32), one request per worker, against the in-process
forward pass: the mxnet package's executor bound at 1,000 images with one OpenMP thread per CPU, data already in
memory (what a user of the mxnet package gets). For the built-in models also where a batch's CPU goes without
HTTP (decoding, the forward pass and encoding, each timed alone on one thread): the best ratio a server of this
design could reach here.
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path

from figures import Figure, at_least

from .rig import Bench, Subject, median, python, run_wrk, worker_environ

TARGET_BATCH_RATIO = 0.80  # 1,000-image uint8 npy images/s over the in-process forward pass on every core

IN_PROCESS = """
import json, sys, time
import mxnet as mx
import numpy as np
model_dir, batch, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
sym, args, aux = mx.model.load_checkpoint(model_dir + "/model", 0)
shape = json.load(open(model_dir + "/model-shapes.json"))[0]["shape"][1:]
ex = sym.simple_bind(mx.cpu(), data=(batch, *shape), grad_req="null")
ex.copy_params_from(args, aux, allow_extra_params=True)
ex.arg_dict["data"][:] = mx.nd.array(np.random.rand(batch, *shape))
for _ in range(3):
    ex.forward(is_train=False)[0].wait_to_read()
n, start, cpu = 0, time.perf_counter(), time.process_time()
while time.perf_counter() - start < seconds:
    ex.forward(is_train=False)[0].wait_to_read()
    n += 1
print(n * batch / (time.perf_counter() - start), (time.process_time() - cpu) / (n * batch) * 1e6)
"""

# Each stage of a worker's batch request (the same modules, the workers' MXNet settings) timed alone on one
# thread, in CPU microseconds per image.
BATCH_STAGES = """
import sys, time
from pathlib import Path
from mxnet_byoc.serve import codecs, network
model_dir, body = sys.argv[1], Path(sys.argv[2]).read_bytes()
model = network.load(model_dir)
batch = codecs.decode(body, "application/x-npy", model.input_shape)
probabilities = model.predict(batch)
stages = {"decode": lambda: codecs.decode(body, "application/x-npy", model.input_shape),
          "forward": lambda: model.predict(batch),
          "encode": lambda: codecs.encode(probabilities, model.classes, "application/json")}
for name, step in stages.items():
    best = float("inf")
    for _ in range(5):
        start = time.thread_time()
        for _ in range(20):
            step()
        best = min(best, (time.thread_time() - start) / 20 / len(batch) * 1e6)
    print(name, best)
"""


def in_process_forward(model_dir: Path, seconds: float, threads: int) -> dict[str, float]:
    """Images per second and CPU microseconds per image of the in-process forward pass on `threads` threads."""
    out = python(IN_PROCESS, model_dir, 1000, seconds, env={**os.environ, "OMP_NUM_THREADS": str(threads)},
                 what="the in-process forward pass")
    rate, cpu_us = map(float, out.split()[-2:])
    return {"images_per_s": rate, "cpu_us_per_image": cpu_us}


def run(bench: Bench) -> list[Figure]:
    return [figure for subject in bench.subjects for figure in measure(bench, subject)]


def measure(bench: Bench, subject: Subject) -> list[Figure]:
    args, cpus = bench.args, len(os.sched_getaffinity(0))
    print(f"\n=== {subject.label} ===\n{args.workers} workers; {args.rounds} rounds of {args.duration} s; {cpus} CPUs",
          flush=True)
    ours = bench.serve(subject, "batch.log")
    runs: dict[str, list] = {"uint8": [], "float32": []}
    forwards = []
    try:
        for _ in range(args.rounds):
            for kind, kind_runs in runs.items():
                kind_runs.append(run_wrk(bench.wrk, bench.script, ours, bench.batches[kind], "application/x-npy",
                                          args.workers, args.duration))
            forwards.append(in_process_forward(subject.model_dir, args.duration, threads=cpus))
    finally:
        ours.stop()

    rates = [f["images_per_s"] for f in forwards]
    forward = f"in-process forward pass {statistics.median(rates):,.0f} images/s"
    print(f"\n1,000-image application/x-npy batches ({args.workers} concurrent requests, one per worker)")
    figures = []
    for kind, size in (("uint8", "0.8 MB"), ("float32", "3.1 MB")):
        kind_runs = runs[kind]
        ratio = statistics.median(r["rps"] * 1000 / f for r, f in zip(kind_runs, rates))
        print(f"  {kind:8s} ({size}): {median(kind_runs, 'rps') * 1000:>8.0f} images/s, "
              f"p50 {median(kind_runs, 'p50_ms'):.1f} ms, p99 {median(kind_runs, 'p99_ms'):.1f} ms, "
              f"{median(kind_runs, 'cpu_us') / 1000:.2f} server CPU us per image; ratio to the in-process forward "
              f"pass {ratio:.2f}")
        target = TARGET_BATCH_RATIO if kind == "uint8" and subject.built_in else None
        figures.append(at_least(f"serving.batch.{subject.name}.{kind}", f"{subject.name}: 1,000-image {kind} npy",
                                f"{median(kind_runs, 'rps') * 1000:,.0f} images/s", forward, ratio, target))
    print(f"  in-process forward pass (mxnet executor bound at 1,000, OMP_NUM_THREADS={cpus}): "
          f"{statistics.median(rates):.0f} images/s (runs: {', '.join(f'{f:.0f}' for f in rates)}), "
          f"{median(forwards, 'cpu_us_per_image'):.2f} CPU us per image")
    if subject.built_in:
        out = python(BATCH_STAGES, subject.model_dir, bench.batches["uint8"], env=worker_environ(**subject.env),
                     what="the batch stages")
        stages = {name: float(value) for name, value in (line.split() for line in out.splitlines())}
        # With HTTP free and every core busy with one worker each, a server answers cpus images per
        # sum(stages) microseconds: the best ratio this design reaches on this machine.
        ceiling = cpus * 1e6 / sum(stages.values()) / statistics.median(rates)
        rest = median(runs["uint8"], "cpu_us") / 1000 - sum(stages.values())
        print("  where a uint8 batch's server CPU goes (us per image): "
              + ", ".join(f"{name} {us:.2f}" for name, us in stages.items())
              + f" (each alone on one thread, the workers' settings), HTTP and the rest {rest:.2f}; with HTTP free "
              f"and one worker per core the server would reach {ceiling:.2f} of the in-process forward pass")
        figures.append(Figure(f"serving.batch.{subject.name}.ceiling",
                              f"{subject.name}: 1,000-image uint8 npy with HTTP free (decoding, forward pass and "
                              f"encoding alone, one worker per core)", f"{ceiling * statistics.median(rates):,.0f} "
                              "images/s", forward, ceiling))
    return figures
