#!/usr/bin/env python3
"""Serving benchmark: the real `serve` (gunicorn, production settings) under `wrk`, on this machine.

Prints, in one run:
- one-image application/json at concurrency 1, 8 and 32: requests/s, p50 and p99 latency, next to a
  trivial Flask endpoint (bench/trivial_app.py: reads the body, answers a constant) under the same
  gunicorn settings, and the ratio of the two;
- 1,000-image application/x-npy batches (uint8 and float32): images/s with one request per worker,
  next to the raw in-process MXNet forward pass (the mxnet package's executor bound at batch 1,000, data
  in memory), with MXNet's default threads and with one OpenMP thread per CPU, and the ratios;
- seconds from starting `serve` to its first correct prediction;
- PSS of the serving process tree (master and workers) after the load.

Shared machines are noisy, so each figure is the median of --rounds short runs, and the server and its
reference are measured in alternation (ratios are medians of adjacent pairs). CPU time per request (all
server processes) and per image (in-process) is printed too, with the ratios it gives: it moves far
less with other load than requests/s do.

Each network of --models is trained by `container/train` (--epochs) and measured in turn, the default one
(cnn) first: its forward pass costs about 30 us per image, the mlp's 4.5, so the mlp shows the server's
own overhead at its largest. --model-dir serves a given model directory instead. A summary at the end
sets each model's figures against issue 3's targets.
Usage: .venv/bin/python bench/serve_bench.py [--models cnn,mlp] [--duration 5] [--rounds 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from mxnet_byoc.train import data as idx  # numpy only

ROOT = Path(__file__).resolve().parents[1]
CONTAINER = ROOT / "container"

WRK_SCRIPT = """
wrk.method = "POST"
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = os.getenv("BENCH_CONTENT_TYPE")
wrk.headers["Accept"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH_RESULT %d %d %d %d %d %d %d\\n", summary.requests, summary.duration,
    e.connect + e.read + e.write, e.status, e.timeout, latency:percentile(50), latency:percentile(99)))
end
"""

# The reference for batches: what a user of the mxnet package gets in-process, data already in memory.
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


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    print("installing wrk (apt-get) ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], env=env, capture_output=True, check=True)
    return shutil.which("wrk") or sys.exit("wrk could not be installed")


def mnist_dir() -> Path:
    return Path(os.environ.get("MNIST_DIR") or ROOT.parent / "shared" / "mnist")


def train_model(base: Path, model: str, epochs: int) -> Path:
    channel = base / "input" / "data" / "training"
    channel.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (channel / name).symlink_to(mnist_dir() / name)
    config = base / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps({"model": model, "epochs": str(epochs)}))
    print(f"training a {epochs}-epoch {model} with container/train ...", flush=True)
    started = time.perf_counter()
    result = subprocess.run([sys.executable, str(CONTAINER / "train")],
                            env={**os.environ, "SAGEMAKER_BASE_DIR": str(base)}, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"container/train failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    print(f"  trained in {time.perf_counter() - started:.1f} s", flush=True)
    return base / "model"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A gunicorn process tree on 127.0.0.1 with `serve`'s settings."""

    def __init__(self, command: list[str], base: Path, workers: int, log: Path):
        self.port = free_port()
        self.workers = workers
        self.log = log
        env = {**os.environ, "SAGEMAKER_BASE_DIR": str(base), "SAGEMAKER_BIND_TO_PORT": str(self.port),
               "SAGEMAKER_MODEL_SERVER_WORKERS": str(workers), "MXNET_BYOC_SERVE_HOST": "127.0.0.1"}
        self.started = time.perf_counter()
        self.process = subprocess.Popen(command, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                                        start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}/invocations"

    def wait_all_loaded(self, limit: float = 60) -> None:
        """Until every worker has logged its model loaded: the first answer comes from one worker only."""
        deadline = time.monotonic() + limit
        while len(set(re.findall(r"model loaded from .* \(pid (\d+)\)", self.log.read_text()))) < self.workers:
            if time.monotonic() > deadline or self.process.poll() is not None:
                sys.exit(f"the workers did not load the model:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.02)

    def pids(self) -> list[int]:
        pids, queue = [], [self.process.pid]
        while queue:
            pid = queue.pop()
            pids.append(pid)
            for children in Path(f"/proc/{pid}/task").glob("*/children"):
                queue.extend(int(c) for c in children.read_text().split())
        return pids

    def pss_kib(self) -> int:
        total = 0
        for pid in self.pids():
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        return total

    def cpu_seconds(self) -> float:
        """User and system time of the tree, reaped workers included (cutime, cstime)."""
        total = 0
        for pid in self.pids():
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(f) for f in fields[11:15])
        return total / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def post(url: str, body: bytes, content_type: str, timeout: float = 5.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_for_label(server: Server, body: bytes, label: int | None, limit: float = 60) -> float:
    """Seconds from the server's start to its first 200 (with `label`, when given) for `body`."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            sys.exit(f"the server exited with {server.process.returncode}")
        try:
            status, answer = post(server.url, body, "application/json")
            if status == 200 and (label is None or json.loads(answer)["predictions"][0]["label"] == label):
                return time.perf_counter() - server.started
        except OSError:
            pass
        time.sleep(0.005)
    sys.exit("no correct prediction within a minute")


def run_wrk(wrk: str, script: Path, server: Server, body: Path, content_type: str, connections: int,
            duration: int) -> dict[str, float]:
    env = {**os.environ, "BENCH_BODY": str(body), "BENCH_CONTENT_TYPE": content_type}
    cpu_before = server.cpu_seconds()
    result = subprocess.run([wrk, "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "10s", "-s", str(script),
                             server.url], env=env, capture_output=True, text=True, check=True)
    cpu = server.cpu_seconds() - cpu_before
    line = next(x for x in result.stdout.splitlines() if x.startswith("BENCH_RESULT"))
    requests, micros, socket_errors, bad_status, timeouts, p50, p99 = map(int, line.split()[1:])
    if bad_status or timeouts or not requests:
        sys.exit(f"wrk saw {bad_status} non-2xx answers and {timeouts} timeouts:\n{result.stdout}")
    return {"rps": requests / (micros / 1e6), "p50_ms": p50 / 1000, "p99_ms": p99 / 1000,
            "cpu_us": cpu / requests * 1e6}


def in_process_forward(model_dir: Path, seconds: float, threads: int | None = None) -> dict[str, float]:
    """Images per second and CPU microseconds per image of the in-process forward pass; MXNet's default
    OpenMP threads unless `threads` is given (here MXNet's default used one core of two)."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    result = subprocess.run([sys.executable, "-c", IN_PROCESS, str(model_dir), "1000", str(seconds)],
                            capture_output=True, text=True, env=env)
    if result.returncode != 0:
        sys.exit(f"in-process forward failed:\n{result.stderr[-2000:]}")
    rate, cpu_us = map(float, result.stdout.split()[-2:])
    return {"images_per_s": rate, "cpu_us_per_image": cpu_us}


def median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="cnn,mlp", help="networks container/train trains, measured in turn")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--model-dir", type=Path, help="serve this model directory instead of training one")
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs per figure (the median is shown)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    models = [str(args.model_dir)] if args.model_dir else [m.strip() for m in args.models.split(",") if m.strip()]
    if not args.model_dir and not set(models) <= {"cnn", "mlp"}:
        parser.error(f"--models: expected cnn and/or mlp, got {args.models!r}")
    wrk = ensure_wrk()
    summaries = {}
    for name in models:
        work = Path(tempfile.mkdtemp(prefix="serve-bench-"))
        try:
            base = work / "ml"
            if args.model_dir:
                base.mkdir()
                shutil.copytree(args.model_dir, base / "model")
                label = name
            else:
                train_model(base, name, args.epochs)
                label = f"{args.epochs}-epoch {name} from container/train"
            print(f"\n=== {label} ===", flush=True)
            summaries[name] = benchmark(args, wrk, work, base, label)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    print_targets(summaries, args.workers)


# Issue 3's targets, and AWS's MXNet serving stack measured on this machine (for the memory target).
TARGET_ONE_IMAGE_RATIO = 0.70
TARGET_BATCH_RATIO = 0.80
TARGET_STARTUP_S = 2.0
AWS_STACK_PSS_MIB = 765


def print_targets(summaries: dict[str, dict[str, float]], workers: int) -> None:
    print("\nagainst issue 3's targets (medians of the figures above):")
    rows = [
        ("one-image JSON req/s over the trivial endpoint's, lowest of concurrency 1, 8, 32", "one_image_ratio",
         f">= {TARGET_ONE_IMAGE_RATIO:.2f}", lambda v: v >= TARGET_ONE_IMAGE_RATIO, "{:.2f}"),
        ("1,000-image uint8 npy over the in-process forward pass, MXNet's default threads", "batch_ratio_default",
         f">= {TARGET_BATCH_RATIO:.2f}", lambda v: v >= TARGET_BATCH_RATIO, "{:.2f}"),
        ("1,000-image uint8 npy over the in-process forward pass on every core", "batch_ratio_all_cores",
         f">= {TARGET_BATCH_RATIO:.2f}", lambda v: v >= TARGET_BATCH_RATIO, "{:.2f}"),
        ("start of serve to the first correct prediction (s)", "startup_s",
         f"< {TARGET_STARTUP_S:.0f}", lambda v: v < TARGET_STARTUP_S, "{:.2f}"),
        (f"PSS of the process tree with {workers} workers (MiB)", "pss_mib",
         f"< {AWS_STACK_PSS_MIB / 2:.0f}", lambda v: v < AWS_STACK_PSS_MIB / 2, "{:.0f}"),
    ]
    for text, key, target, met, form in rows:
        figures = ", ".join(f"{name} {form.format(s[key])} ({'met' if met(s[key]) else 'NOT met'})"
                            for name, s in summaries.items())
        print(f"  {text} [{target}]: {figures}")


def benchmark(args: argparse.Namespace, wrk: str, work: Path, base: Path, label: str) -> dict[str, float]:
    model_dir = base / "model"
    images = idx.read_idx(mnist_dir() / "t10k-images-idx3-ubyte.gz").reshape(-1, 28, 28)
    labels = idx.read_idx(mnist_dir() / "t10k-labels-idx1-ubyte.gz")
    script = work / "post.lua"
    script.write_text(WRK_SCRIPT)
    serve = [sys.executable, str(CONTAINER / "serve")]
    trivial = [sys.executable, str(ROOT / "bench" / "trivial_app.py")]
    bodies = {"json": work / "one.json", "uint8": work / "batch-uint8.npy", "float32": work / "batch-float32.npy"}
    np.save(bodies["uint8"], images[:1000])
    np.save(bodies["float32"], images[:1000].astype(np.float32) / 255)

    print(f"model: {label}; {args.workers} workers; {args.rounds} rounds of {args.duration} s per figure; "
          f"{len(os.sched_getaffinity(0))} CPUs", flush=True)

    # Start-up: from launching `serve` to the first request answered with the right label.
    startups, digit, label = [], None, None
    for _ in range(4):  # the first start finds the digit, the next three are timed
        server = Server(serve, base, args.workers, work / "startup.log")
        try:
            if digit is None:  # a test digit this model gets right, found through the server itself
                wait_for_label(server, json.dumps({"instances": [images[0].tolist()]}).encode(), None)
                server.wait_all_loaded()
                status, answer = post(server.url, bodies["uint8"].read_bytes(), "application/x-npy", 30)
                if status != 200:
                    sys.exit(f"the server answered {status}: {answer[:500]!r}")
                found = np.array([p["label"] for p in json.loads(answer)["predictions"]])
                print(f"accuracy through the server on 1,000 test digits: {np.mean(found == labels[:1000]):.3f}")
                pick = int(np.flatnonzero(found == labels[:1000])[0])
                digit, label = json.dumps({"instances": [images[pick].tolist()]}).encode(), int(labels[pick])
                bodies["json"].write_bytes(digit)
                continue
            startups.append(wait_for_label(server, digit, label))
        finally:
            server.stop()

    ours = Server(serve, base, args.workers, work / "serve.log")
    reference = Server(trivial, base, args.workers, work / "trivial.log")
    json_runs: dict[int, tuple[list, list]] = {c: ([], []) for c in (1, 8, 32)}
    batch_runs: dict[str, list] = {"uint8": [], "float32": []}
    forwards: list[dict[str, float]] = []
    all_cores: list[dict[str, float]] = []
    cpus = len(os.sched_getaffinity(0))
    try:
        wait_for_label(ours, digit, label)
        ours.wait_all_loaded()
        wait_for_label(reference, b"{}", None)
        for _ in range(args.rounds):
            for c, (mine, theirs) in json_runs.items():
                mine.append(run_wrk(wrk, script, ours, bodies["json"], "application/json", c, args.duration))
                theirs.append(run_wrk(wrk, script, reference, bodies["json"], "application/json", c, args.duration))
            for kind, runs in batch_runs.items():
                runs.append(run_wrk(wrk, script, ours, bodies[kind], "application/x-npy", args.workers,
                                    args.duration))
            forwards.append(in_process_forward(model_dir, args.duration))
            all_cores.append(in_process_forward(model_dir, args.duration, threads=cpus))
        pss = ours.pss_kib()
    finally:
        ours.stop()
        reference.stop()

    print("\none-image application/json (wrk, 1 thread; trivial = Flask endpoint under the same gunicorn settings)")
    print(f"{'concurrency':>11} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'CPU us':>7} | {'trivial':>7} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'CPU us':>7} | {'ratio':>5} {'CPU ratio':>9}")
    for c, (mine, theirs) in json_runs.items():
        ratio = statistics.median(m["rps"] / t["rps"] for m, t in zip(mine, theirs))
        cpu_ratio = statistics.median(t["cpu_us"] / m["cpu_us"] for m, t in zip(mine, theirs))
        print(f"{c:>11} {median(mine, 'rps'):>7.0f} {median(mine, 'p50_ms'):>7.2f} {median(mine, 'p99_ms'):>7.2f} "
              f"{median(mine, 'cpu_us'):>7.0f} | {median(theirs, 'rps'):>7.0f} {median(theirs, 'p50_ms'):>7.2f} "
              f"{median(theirs, 'p99_ms'):>7.2f} {median(theirs, 'cpu_us'):>7.0f} | {ratio:>5.2f} {cpu_ratio:>9.2f}")
    print("  (ratio: requests/s over the trivial endpoint's, median of adjacent pairs; CPU ratio: the trivial "
          "endpoint's server CPU time per request over ours)")

    rates = [f["images_per_s"] for f in forwards]
    all_rates = [f["images_per_s"] for f in all_cores]
    print(f"\n1,000-image application/x-npy batches ({args.workers} concurrent requests, one per worker)")
    for kind, size in (("uint8", "0.8 MB"), ("float32", "3.1 MB")):
        runs = batch_runs[kind]
        ratio = statistics.median(r["rps"] * 1000 / f for r, f in zip(runs, rates))
        ratio_all = statistics.median(r["rps"] * 1000 / f for r, f in zip(runs, all_rates))
        print(f"  {kind:8s} ({size}): {median(runs, 'rps') * 1000:>8.0f} images/s, "
              f"p50 {median(runs, 'p50_ms'):.1f} ms, p99 {median(runs, 'p99_ms'):.1f} ms, "
              f"{median(runs, 'cpu_us') / 1000:.2f} server CPU us per image; ratio to the in-process forward "
              f"pass {ratio:.2f} (default threads), {ratio_all:.2f} ({cpus} threads)")
    for label, runs in (("default threads", forwards), (f"OMP_NUM_THREADS={cpus}", all_cores)):
        found = [f["images_per_s"] for f in runs]
        print(f"  in-process forward pass (mxnet executor bound at 1,000, {label}): "
              f"{statistics.median(found):.0f} images/s (runs: {', '.join(f'{f:.0f}' for f in found)}), "
              f"{statistics.median(f['cpu_us_per_image'] for f in runs):.2f} CPU us per image")

    print(f"\nstart of `serve` to first correct prediction: median {statistics.median(startups):.2f} s "
          f"(runs: {', '.join(f'{s:.2f}' for s in startups)})")
    print(f"PSS of the serving process tree ({args.workers} workers, after the load): {pss / 1024:.0f} MiB")
    uint8 = batch_runs["uint8"]
    return {
        "one_image_ratio": min(statistics.median(m["rps"] / t["rps"] for m, t in zip(*runs))
                               for runs in json_runs.values()),
        "batch_ratio_default": statistics.median(r["rps"] * 1000 / f for r, f in zip(uint8, rates)),
        "batch_ratio_all_cores": statistics.median(r["rps"] * 1000 / f for r, f in zip(uint8, all_rates)),
        "startup_s": statistics.median(startups),
        "pss_mib": pss / 1024,
    }


if __name__ == "__main__":
    main()
