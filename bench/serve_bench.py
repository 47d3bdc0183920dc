#!/usr/bin/env python3
"""Serving benchmark: the real `serve` (gunicorn, production settings) under `wrk`, against the plain endpoint.

The plain endpoint is bench/trivial_app.py (a Flask view that reads the body and answers a constant) run as
`gunicorn -w N trivial_app:app`, gunicorn's default settings: what a bare HTTP stack costs on this machine.
For each model (the default cnn, then the mlp, each trained by `container/train`, then the same mlp through a
user's `model_fn` and `transform_fn` in script mode) it prints, in one run:
- one-image application/json at concurrency 1, 8 and 32: requests/s, p50 and p99 latency and server CPU
  per request, ours beside the plain endpoint's, and the ratio of the two; for the built-in models also the
  ceiling: the same `serve` whose handler only runs the forward pass on an image held in memory, so that what
  decoding and encoding may cost before a target is missed shows in the same run;
- where a worker's CPU goes per request (py-spy samples of one worker at concurrency 8, in stages: gunicorn,
  request log, body read, JSON parse, pixels to float32, predict, encode), ours beside the plain endpoint's;
- 1,000-image application/x-npy batches (uint8 and float32), one request per worker: images/s against the
  in-process forward pass of the mxnet package's executor bound at 1,000 images with one OpenMP thread per CPU,
  and where a batch's CPU goes without HTTP (decoding, the forward pass and encoding, each timed alone on one
  thread): the best ratio a server of this design could reach here;
- seconds from starting `serve` to its first correct prediction, and the PSS of the serving process tree.
It ends with each of issue 14's targets, met or NOT met, with the plain endpoint's figure beside ours.

Shared machines are noisy: every figure is the median of --rounds short runs, ours and the plain endpoint
measured in alternation (a ratio is the median over adjacent pairs), and `uptime` is printed at the start
and the end. Server CPU time per request moves far less with other load than requests/s do.
Usage: .venv/bin/python bench/serve_bench.py [--models cnn,mlp] [--duration 5] [--rounds 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

from devkit import datasets, jobs, net
from devkit.project import ROOT
from devkit.servers import Server
from mxnet_byoc.serve import allocator
from mxnet_byoc.serve.settings import WORKER_ENV_DEFAULTS
from mxnet_byoc.train import data as idx  # numpy only

CONCURRENCIES = (1, 8, 32)
INVOCATIONS = "/invocations"

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

# Where a 1,000-image batch's server CPU goes without HTTP: each stage of a worker's request (the same modules,
# the workers' MXNet settings) timed alone on one thread, in CPU microseconds per image.
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

# Where the start-up time goes, in one process without gunicorn: what each worker does before its first answer.
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

# `serve` as it runs, with a handler that only runs the forward pass on one image held in memory and answers a
# constant: the most any decoding and encoding could give one-image requests through this server on this machine.
FORWARD_ONLY_SERVE = """
from mxnet_byoc.serve import allocator
allocator.restart_with_allocator()  # as container/serve does
import numpy as np
from mxnet_byoc.serve import device, digits, network, server

class ForwardOnly:
    def __init__(self, model):
        self.model, self.image = model, np.zeros((1, *model.input_shape), np.float32)

    def invoke(self, body, content_type, accept):
        self.model.predict(self.image)
        return b'{"predictions":[{"label":0}]}', "application/json"

digits.loader = lambda default_accept: lambda model_dir: ForwardOnly(network.load(model_dir, device.current()))
raise SystemExit(server.main())
"""

# Issue 14's targets.
TARGET_ONE_IMAGE = {"mlp": 0.80, "cnn": 0.70}  # one-image JSON req/s over the plain endpoint's, every concurrency
TARGET_BATCH_RATIO = 0.80  # 1,000-image uint8 npy images/s over the in-process forward pass on every core
TARGET_STARTUP_S = 0.5
TARGET_PSS_MIB = 200

# py-spy stacks to stages: the innermost frame that matches a rule names the stage of a sample.
STAGES = [  # (stage, the end of the frame's file path, its function names or None for any)
    ("idle", "/gunicorn/workers/sync.py", {"SyncWorker.wait"}),  # gunicorn's worker (the plain endpoint)
    ("idle", "/serve/worker.py", {"SyncWorker.wait_for_work"}),
    ("predict (forward pass)", "/serve/network.py", None),
    ("user script: MXNet's Python (NDArray, Gluon)", "/mxnet/", None),  # the built-in path has no such frame
    ("user script: its own lines, json, numpy", "/inference.py", None),
    ("script mode: our handler wrapper", "/serve/script.py", None),
    ("encode the answer", "/serve/codecs.py", {"encode", "_label_pieces"}),
    ("JSON parse", "/serve/codecs.py", {"_parse_json"}),
    ("pixels to float32", "/serve/codecs.py", {"_stack", "_pixels", "_to_unit_range", "_one_to_unit_range",
                                               "_each_to_unit_range", "_to_batch"}),
    ("decode, other", "/serve/codecs.py", None),
    ("body read", "/serve/app.py", {"_read_body", "_read_from_socket"}),
    ("request log", "/serve/server.py", {"RequestLog.access"}),
    ("gunicorn: environ, send the answer", "/serve/worker.py", {"Response.write", "Response.default_headers",
                                                                "Response.should_close", "_body_read"}),
    ("request log", "/gunicorn/glogging.py", None),
    ("gunicorn: accept, close, loop", "/serve/worker.py", None),  # our worker class
    ("app, other (dispatch, handler)", "/serve/", None),
    ("app, other (dispatch, handler)", "/trivial_app.py", None),
    ("Flask and werkzeug", "/flask/", None),
    ("Flask and werkzeug", "/werkzeug/", None),
    ("gunicorn: read and parse the request", "/gunicorn/http/message.py", None),
    ("gunicorn: read and parse the request", "/gunicorn/http/parser.py", None),
    ("gunicorn: read and parse the request", "/gunicorn/http/unreader.py", None),
    ("gunicorn: read and parse the request", "/gunicorn/http/body.py", None),
    ("gunicorn: environ, send the answer", "/gunicorn/http/wsgi.py", None),
    ("gunicorn: environ, send the answer", "/gunicorn/util.py", {"write"}),
    ("gunicorn: accept, close, loop", "/gunicorn/", None),
]


def random_digit_json() -> bytes:
    """One image of random 0-255 pixels as a JSON request body, the same at every call: for benches that compare
    servers on the same body and need no real digit."""
    return orjson.dumps({"instances": [np.random.default_rng(0).integers(0, 256, (28, 28)).tolist()]})


def one_image_folder(work: Path, model_dir: Path) -> tuple[Path, Path]:
    """`work` made ready to serve `model_dir` (as work/model) under wrk with random_digit_json(): the paths of
    wrk's script and of the body file."""
    (work / "model").symlink_to(model_dir.resolve())
    script, body = work / "post.lua", work / "one.json"
    script.write_text(WRK_SCRIPT)
    body.write_bytes(random_digit_json())
    return script, body


def ensure_wrk() -> str:
    return ensure_program("wrk", "wrk")


def ensure_program(program: str, package: str) -> str:
    """The path of `program`, installed with Debian's `package` (apt-get) when it is missing."""
    found = shutil.which(program)
    if found:
        return found
    apt_install(package)
    return shutil.which(program) or sys.exit(f"{program} could not be installed")


def apt_install(package: str) -> None:
    print(f"installing {package} (apt-get) ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", package]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=True)
        subprocess.run(install, env=env, capture_output=True, check=True)


def mnist_dir() -> Path:
    return datasets.find_mnist()


def train_model(base: Path, model: str, epochs: int) -> Path:
    """A model directory from `container/train` on MNIST's training channel, in a job folder at `base`."""
    jobs.make_job(base, mnist_dir(), {"model": model, "epochs": str(epochs)}, channels=("training",), link=True)
    print(f"training a {epochs}-epoch {model} with container/train ...", flush=True)
    run = jobs.run_train(base)
    if run.returncode != 0:
        sys.exit(f"container/train failed:\n{run.log[-4000:]}")
    print(f"  trained in {run.seconds:.1f} s", flush=True)
    return base / "model"


def serve_process(base: Path, workers: int, log: Path, env: dict[str, str] | None = None) -> Server:
    """`container/serve` on `base` with its production settings, `workers` workers and `env` on top."""
    return Server(base, log, SAGEMAKER_MODEL_SERVER_WORKERS=str(workers), **(env or {}))


def plain_endpoint(base: Path, workers: int, log: Path, app: str = "trivial_app:app", **env: str) -> Server:
    """`gunicorn -w N APP` for an app in bench/ (default trivial_app:app): gunicorn's defaults but for the port;
    `env` on top of this environment."""
    port = net.free_port()
    command = [sys.executable, "-m", "gunicorn", "--chdir", str(ROOT / "bench"), "-w", str(workers),
               "-b", f"127.0.0.1:{port}", app]
    return Server(base, log, command, port=port, SAGEMAKER_MODEL_SERVER_WORKERS=str(workers), **env)


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
            sys.exit(f"the server exited with {server.process.returncode}:\n{server.log.read_text()[-3000:]}")
        try:
            status, answer = post(server.url(INVOCATIONS), body, "application/json")
            if status == 200 and (label is None or json.loads(answer)["predictions"][0]["label"] == label):
                return time.perf_counter() - server.started
        except OSError:
            pass
        time.sleep(0.005)
    sys.exit("no correct prediction within a minute")


def wrk_command(wrk: str, script: Path, server: Server, connections: int, duration: float) -> list[str]:
    return [wrk, "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "10s", "-s", str(script),
            server.url(INVOCATIONS)]


def wrk_result(stdout: str) -> tuple[int, float, float, float]:
    """(requests, seconds, p50 ms, p99 ms) from the script's BENCH_RESULT line; exits on any failed request."""
    line = next(x for x in stdout.splitlines() if x.startswith("BENCH_RESULT"))
    requests, micros, socket_errors, bad_status, timeouts, p50, p99 = map(int, line.split()[1:])
    if bad_status or timeouts or not requests:
        sys.exit(f"wrk saw {bad_status} non-2xx answers and {timeouts} timeouts:\n{stdout}")
    return requests, micros / 1e6, p50 / 1000, p99 / 1000


def run_wrk(wrk: str, script: Path, server: Server, body: Path, content_type: str, connections: int,
            duration: int) -> dict[str, float]:
    env = {**os.environ, "BENCH_BODY": str(body), "BENCH_CONTENT_TYPE": content_type}
    cpu_before = server.cpu_seconds()
    result = subprocess.run(wrk_command(wrk, script, server, connections, duration), env=env, capture_output=True,
                            text=True, check=True)
    cpu = server.cpu_seconds() - cpu_before
    requests, seconds, p50, p99 = wrk_result(result.stdout)
    return {"rps": requests / seconds, "p50_ms": p50, "p99_ms": p99, "cpu_us": cpu / requests * 1e6}


def in_process_forward(model_dir: Path, seconds: float, threads: int) -> dict[str, float]:
    """Images per second and CPU microseconds per image of the in-process forward pass on `threads` threads."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    result = subprocess.run([sys.executable, "-c", IN_PROCESS, str(model_dir), "1000", str(seconds)],
                            capture_output=True, text=True, env=env)
    if result.returncode != 0:
        sys.exit(f"in-process forward failed:\n{result.stderr[-2000:]}")
    rate, cpu_us = map(float, result.stdout.split()[-2:])
    return {"images_per_s": rate, "cpu_us_per_image": cpu_us}


def batch_stages(model_dir: Path, body: Path, env: dict[str, str]) -> dict[str, float]:
    """CPU microseconds per image of decoding `body`, the forward pass and encoding the answer, each on one thread
    in one process with the workers' MXNet settings: what a server spends on a batch if HTTP were free."""
    result = subprocess.run([sys.executable, "-c", BATCH_STAGES, str(model_dir), str(body)], capture_output=True,
                            text=True, env=worker_environ(**env))
    if result.returncode != 0:
        sys.exit(f"the batch stages failed:\n{result.stderr[-2000:]}")
    return {name: float(value) for name, value in (line.split() for line in result.stdout.splitlines())}


def worker_environ(**extra: str) -> dict[str, str]:
    """This environment as `serve` gives it to its workers (their MXNet settings and allocator), `extra` on top."""
    return allocator.with_allocator({**os.environ, **WORKER_ENV_DEFAULTS, **extra})


def startup_phases(model_dir: Path, env: dict[str, str]) -> list[float]:
    """Seconds spent in each of STARTUP_PHASE_NAMES, from launching the interpreter."""
    started = time.time()
    result = subprocess.run([sys.executable, "-c", STARTUP_PHASES, str(model_dir)], capture_output=True, text=True,
                            env=worker_environ(**env))
    if result.returncode != 0:
        sys.exit(f"the start-up phases failed:\n{result.stderr[-2000:]}")
    marks = [started, *map(float, result.stdout.split())]
    return [later - earlier for earlier, later in zip(marks, marks[1:])]


def py_spy() -> str | None:
    found = shutil.which("py-spy") or Path(sys.executable).with_name("py-spy")
    return str(found) if Path(found).exists() else None


def stage_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        function, _, where = frame.rpartition(" (")
        where = "/" + where  # py-spy writes paths from the import root: flask/app.py, mxnet_byoc/serve/app.py
        for stage, path, functions in STAGES:
            if path in where and (functions is None or function in functions):
                return stage
    return "other (Python's runtime)"


def profile(wrk: str, script: Path, server: Server, body: Path, seconds: float, work: Path
            ) -> collections.Counter | str:
    """py-spy samples of one worker, by stage, while wrk sends one-image JSON at concurrency 8; a string
    saying why when py-spy cannot run."""
    spy = py_spy()
    if spy is None:
        return "py-spy is not installed (requirements-dev.txt has it)"
    worker = [pid for pid in server.pids() if pid != server.process.pid][0]
    env = {**os.environ, "BENCH_BODY": str(body), "BENCH_CONTENT_TYPE": "application/json"}
    load = subprocess.Popen(wrk_command(wrk, script, server, 8, seconds + 2), env=env, stdout=subprocess.PIPE,
                            text=True)
    time.sleep(1)
    raw = work / "py-spy.txt"
    # --nonblocking: the worker is never paused to be sampled, so it runs as it would unwatched.
    spied = subprocess.run([spy, "record", "--pid", str(worker), "--duration", str(int(seconds)), "--rate", "1000",
                            "--nonblocking", "--format", "raw", "-o", str(raw)], capture_output=True, text=True)
    wrk_result(load.communicate()[0])
    if spied.returncode != 0 or not raw.exists():
        return f"py-spy failed: {(spied.stderr or spied.stdout or 'no output').strip().splitlines()[0]}"
    stages: collections.Counter = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if count.isdigit():  # py-spy may add a line of its own (a warning) to the samples
            stages[stage_of(stack.split(";"))] += int(count)
    stages.pop("idle", None)
    return stages


def print_profiles(ours: collections.Counter | str, plain: collections.Counter | str, cpu_us: tuple[float, float],
                   workers: int) -> None:
    print(f"\nwhere a worker's CPU goes, one-image JSON at concurrency 8 (py-spy samples of 1 of {workers} workers; "
          f"us per request: a stage's share of the samples x the server's CPU time per request at concurrency 8)")
    if isinstance(ours, str) or isinstance(plain, str):
        print(f"  skipped: {ours if isinstance(ours, str) else plain}")
        return
    print(f"  {'stage':46} {'ours':>6} {'us/req':>7} | {'plain':>6} {'us/req':>7}")
    for name, _ in (ours + plain).most_common():
        cells = []
        for stages, cpu in zip((ours, plain), cpu_us):
            share = stages[name] / max(1, sum(stages.values()))
            cells.append(f"{share * 100:>5.1f}% {share * cpu:>7.0f}" if stages[name] else f"{'-':>6} {'-':>7}")
        print(f"  {name:46} {cells[0]} | {cells[1]}")
    print(f"  {'all (server CPU per request)':46} {'':>6} {cpu_us[0]:>7.0f} | {'':>6} {cpu_us[1]:>7.0f}")


def median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


@dataclass
class Subject:
    """What is served and how it is measured: a model directory under `base`, and the environment for `serve`."""

    name: str
    base: Path
    target: float | None  # one-image JSON req/s over the plain endpoint's (None: no target, shown only)
    label: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def built_in(self) -> bool:
        """Our own digit path (no user script), whose start-up phases can be timed in one process."""
        return "SAGEMAKER_PROGRAM" not in self.env


# A user's inference module for the digit networks, as a user would write it for AWS's MXNet container: the
# network as a Gluon block; JSON pixels ({"instances": ...} or a bare array, 0-255 or 0-1) or npy batches (uint8
# or float32) in, labels out. script_serve_bench.py serves it too.
TRANSFORM_SCRIPT = """\
import io
import json
import os

import mxnet as mx
import numpy as np


def model_fn(model_dir):
    net = mx.gluon.SymbolBlock.imports(os.path.join(model_dir, "model-symbol.json"), ["data"],
                                       os.path.join(model_dir, "model-0000.params"))
    net.hybridize(static_alloc=True, static_shape=True)
    return net


def transform_fn(net, body, content_type, accept):
    if content_type == "application/x-npy":
        pixels = np.load(io.BytesIO(body))
    else:
        data = json.loads(body)
        pixels = np.asarray(data["instances"] if isinstance(data, dict) else data, dtype=np.float32)
    pixels = pixels.astype(np.float32) / 255 if pixels.dtype != np.float32 or pixels.max() > 1 else pixels
    labels = net(mx.nd.array(pixels.reshape(-1, 1, 28, 28))).argmax(axis=1).asnumpy().astype(int)
    return json.dumps({"predictions": [{"label": int(x)} for x in labels]}), "application/json"
"""


def transform_fn_subject(work: Path, mlp_base: Path) -> Subject:
    """The mlp served through a user's `model_fn` and `transform_fn` (script mode: model/code/inference.py,
    as the SDK repacks an entry_point), measured like the built-in models."""
    base = work / "transform_fn"
    shutil.copytree(mlp_base / "model", base / "model")
    code = base / "model" / "code"
    code.mkdir()
    (code / "inference.py").write_text(TRANSFORM_SCRIPT)
    return Subject("transform_fn", base, None, "the same mlp through a user's transform_fn "
                   "(model/code/inference.py)", env={"SAGEMAKER_PROGRAM": "inference.py"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="cnn,mlp", help="networks container/train trains, measured in turn")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--model-dir", type=Path, help="serve this model directory (target of the mlp) instead")
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs per figure (the median is shown)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--profile-seconds", type=int, default=4, help="py-spy sampling per model (0: none)")
    args = parser.parse_args()

    names = [m.strip() for m in args.models.split(",") if m.strip()]
    if not args.model_dir and not set(names) <= set(TARGET_ONE_IMAGE):
        parser.error(f"--models: expected cnn and/or mlp, got {args.models!r}")
    wrk = ensure_wrk()
    print(f"uptime at the start: {uptime()}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    try:
        subjects = []
        if args.model_dir:
            base = work / "given"
            shutil.copytree(args.model_dir, base / "model")
            subjects.append(Subject("given", base, TARGET_ONE_IMAGE["mlp"], str(args.model_dir)))
        for name in [] if args.model_dir else names:
            base = work / name
            train_model(base, name, args.epochs)
            subjects.append(Subject(name, base, TARGET_ONE_IMAGE[name], f"{args.epochs}-epoch {name} from "
                                    "container/train"))
        mlp = next((s for s in subjects if s.name in ("mlp", "given")), None)
        if mlp:
            subjects.append(transform_fn_subject(work, mlp.base))
        summaries = {}
        for subject in subjects:
            print(f"\n=== {subject.label} ===", flush=True)
            summaries[subject.name] = benchmark(args, wrk, work / f"run-{subject.name}", subject)
        print_targets(summaries, subjects, args.workers)
        print(f"uptime at the end: {uptime()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def print_targets(summaries: dict[str, dict], subjects: list[Subject], workers: int) -> None:
    print("\nissue 14's targets (medians of the figures above; plain = `gunicorn -w N trivial_app:app`):")

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    for subject in subjects:
        s = summaries[subject.name]
        for c in CONCURRENCIES:
            ratio, ours, plain = s["json"][c]
            goal = (f"[>= {subject.target:.2f}] {verdict(ratio >= subject.target)}" if subject.target
                    else "(shown: issue 14 sets no target for a user's own code)")
            if c in s["ceiling"]:
                goal += f"; ceiling without decoding and encoding {s['ceiling'][c][0]:.3f}"
            print(f"  {subject.name}: one-image JSON at concurrency {c:>2}: {ours:,.0f} req/s, plain {plain:,.0f}: "
                  f"{ratio:.3f} {goal}")
    for subject in subjects:
        s = summaries[subject.name]
        if subject.built_in:
            print(f"  {subject.name}: 1,000-image uint8 npy: {s['batch_rate']:,.0f} images/s, in-process forward "
                  f"pass on every core {s['forward_rate']:,.0f}: {s['batch_ratio']:.3f} [>= {TARGET_BATCH_RATIO:.2f}] "
                  f"{verdict(s['batch_ratio'] >= TARGET_BATCH_RATIO)}; at most {s['batch_ceiling']:.3f} with HTTP free "
                  f"(decoding, forward pass and encoding alone)")
    for subject in subjects:
        s = summaries[subject.name]
        if not subject.built_in:
            print(f"  {subject.name}: start of serve to the first correct prediction {s['startup_s']:.2f} s, "
                  f"PSS {s['pss_mib']:.0f} MiB (shown, no target)")
            continue
        print(f"  {subject.name}: start of serve to the first correct prediction: {s['startup_s']:.2f} s "
              f"[< {TARGET_STARTUP_S}] {verdict(s['startup_s'] < TARGET_STARTUP_S)}")
        print(f"  {subject.name}: PSS of the serving process tree with {workers} workers: {s['pss_mib']:.0f} MiB "
              f"[< {TARGET_PSS_MIB}] {verdict(s['pss_mib'] < TARGET_PSS_MIB)}")


def benchmark(args: argparse.Namespace, wrk: str, work: Path, subject: Subject) -> dict:
    work.mkdir(parents=True)
    base, model_dir = subject.base, subject.base / "model"
    images = idx.read_idx(mnist_dir() / "t10k-images-idx3-ubyte.gz").reshape(-1, 28, 28)
    labels = idx.read_idx(mnist_dir() / "t10k-labels-idx1-ubyte.gz")
    script = work / "post.lua"
    script.write_text(WRK_SCRIPT)
    bodies = {"json": work / "one.json", "uint8": work / "batch-uint8.npy", "float32": work / "batch-float32.npy"}
    np.save(bodies["uint8"], images[:1000])
    np.save(bodies["float32"], images[:1000].astype(np.float32) / 255)
    cpus = len(os.sched_getaffinity(0))
    print(f"{args.workers} workers; {args.rounds} rounds of {args.duration} s per figure; {cpus} CPUs", flush=True)

    # Start-up: from launching `serve` to the first request answered with the right label.
    startups, digit, label = [], None, None
    for _ in range(4):  # the first start finds the digit, the next three are timed
        server = serve_process(base, args.workers, work / "startup.log", subject.env)
        try:
            if digit is None:  # a test digit this model gets right, found through the server itself
                wait_for_label(server, json.dumps({"instances": [images[0].tolist()]}).encode(), None)
                server.wait_loaded()
                status, answer = post(server.url(INVOCATIONS), bodies["uint8"].read_bytes(), "application/x-npy", 30)
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

    ours = serve_process(base, args.workers, work / "serve.log", subject.env)
    plain = plain_endpoint(base, args.workers, work / "plain.log")
    servers = [ours, plain]
    if subject.built_in:  # the ceiling: the same server and model with no decoding or encoding
        servers.append(Server(base, work / "forward-only.log", [sys.executable, "-c", FORWARD_ONLY_SERVE],
                              SAGEMAKER_MODEL_SERVER_WORKERS=str(args.workers)))
    json_runs: dict[int, list[list]] = {c: [[] for _ in servers] for c in CONCURRENCIES}
    batch_runs: dict[str, list] = {"uint8": [], "float32": []}
    forwards: list[dict[str, float]] = []
    try:
        wait_for_label(ours, digit, label)
        ours.wait_loaded()
        wait_for_label(plain, b"{}", None)
        for server in servers[2:]:
            server.wait_loaded()
        for round_ in range(args.rounds):
            for c, runs_of in json_runs.items():
                order = list(zip(servers, runs_of))
                for server, runs in order if round_ % 2 == 0 else order[::-1]:  # who goes first alternates
                    runs.append(run_wrk(wrk, script, server, bodies["json"], "application/json", c, args.duration))
            for kind, runs in batch_runs.items():
                runs.append(run_wrk(wrk, script, ours, bodies[kind], "application/x-npy", args.workers,
                                    args.duration))
            forwards.append(in_process_forward(model_dir, args.duration, threads=cpus))
        profiles = ("skipped (--profile-seconds 0)",) * 2
        if args.profile_seconds:
            profiles = tuple(profile(wrk, script, server, bodies["json"], args.profile_seconds, work)
                             for server in (ours, plain))
        pss = ours.pss_kib()
    finally:
        for server in servers:
            server.stop()

    print("\none-image application/json (wrk, 1 thread; plain = `gunicorn -w N trivial_app:app`, default settings)")
    print(f"{'concurrency':>11} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'CPU us':>7} | {'plain':>7} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'CPU us':>7} | {'ratio':>5} {'CPU ratio':>9}")
    summary: dict = {"json": {}, "ceiling": {}}
    for c, (mine, theirs, *forward_only) in json_runs.items():
        ratio = statistics.median(m["rps"] / t["rps"] for m, t in zip(mine, theirs))
        cpu_ratio = statistics.median(t["cpu_us"] / m["cpu_us"] for m, t in zip(mine, theirs))
        summary["json"][c] = (ratio, median(mine, "rps"), median(theirs, "rps"))
        if forward_only:
            summary["ceiling"][c] = (statistics.median(f["rps"] / t["rps"] for f, t in zip(forward_only[0], theirs)),
                                     median(forward_only[0], "rps"), median(forward_only[0], "cpu_us"))
        print(f"{c:>11} {median(mine, 'rps'):>7.0f} {median(mine, 'p50_ms'):>7.2f} {median(mine, 'p99_ms'):>7.2f} "
              f"{median(mine, 'cpu_us'):>7.0f} | {median(theirs, 'rps'):>7.0f} {median(theirs, 'p50_ms'):>7.2f} "
              f"{median(theirs, 'p99_ms'):>7.2f} {median(theirs, 'cpu_us'):>7.0f} | {ratio:>5.2f} {cpu_ratio:>9.2f}")
    print("  (ratio: our requests/s over the plain endpoint's, median of adjacent pairs; CPU ratio: the plain "
          "endpoint's server CPU time per request over ours)")
    if summary["ceiling"]:
        print("  the ceiling, `serve` with a handler that runs the forward pass on one image in memory and answers a "
              "constant (no decoding, no encoding):")
        for c, (ceiling, rps, cpu) in summary["ceiling"].items():
            print(f"{c:>11} {rps:>7.0f} req/s, {cpu:.0f} CPU us per request: {ceiling:.2f} of the plain endpoint")
    print_profiles(*profiles, (median(json_runs[8][0], "cpu_us"), median(json_runs[8][1], "cpu_us")), args.workers)

    rates = [f["images_per_s"] for f in forwards]
    print(f"\n1,000-image application/x-npy batches ({args.workers} concurrent requests, one per worker)")
    for kind, size in (("uint8", "0.8 MB"), ("float32", "3.1 MB")):
        runs = batch_runs[kind]
        ratio = statistics.median(r["rps"] * 1000 / f for r, f in zip(runs, rates))
        print(f"  {kind:8s} ({size}): {median(runs, 'rps') * 1000:>8.0f} images/s, "
              f"p50 {median(runs, 'p50_ms'):.1f} ms, p99 {median(runs, 'p99_ms'):.1f} ms, "
              f"{median(runs, 'cpu_us') / 1000:.2f} server CPU us per image; ratio to the in-process forward "
              f"pass {ratio:.2f}")
    print(f"  in-process forward pass (mxnet executor bound at 1,000, OMP_NUM_THREADS={cpus}): "
          f"{statistics.median(rates):.0f} images/s (runs: {', '.join(f'{f:.0f}' for f in rates)}), "
          f"{median(forwards, 'cpu_us_per_image'):.2f} CPU us per image")
    batch_ceiling = None
    if subject.built_in:
        stages = batch_stages(model_dir, bodies["uint8"], subject.env)
        # With HTTP free and every core busy with one worker each, a server answers cpus images per
        # sum(stages) microseconds: the best ratio this design reaches on this machine.
        batch_ceiling = cpus * 1e6 / sum(stages.values()) / statistics.median(rates)
        rest = median(batch_runs["uint8"], "cpu_us") / 1000 - sum(stages.values())
        print("  where a uint8 batch's server CPU goes (us per image): "
              + ", ".join(f"{name} {us:.2f}" for name, us in stages.items())
              + f" (each alone on one thread, the workers' settings), HTTP and the rest {rest:.2f}; with HTTP free "
              f"and one worker per core the server would reach {batch_ceiling:.2f} of the in-process forward pass")

    print(f"\nstart of `serve` to first correct prediction: median {statistics.median(startups):.2f} s "
          f"(runs: {', '.join(f'{s:.2f}' for s in startups)})")
    if subject.built_in:
        phases = [startup_phases(model_dir, subject.env) for _ in range(3)]
        print("  the same work in one process without gunicorn (medians of 3): " + ", ".join(
            f"{name} {statistics.median(p[i] for p in phases):.2f} s" for i, name in enumerate(STARTUP_PHASE_NAMES))
            + f"; in all {statistics.median(sum(p) for p in phases):.2f} s")
    print(f"PSS of the serving process tree ({args.workers} workers, after the load): {pss / 1024:.0f} MiB")
    uint8 = batch_runs["uint8"]
    summary.update({
        "batch_ratio": statistics.median(r["rps"] * 1000 / f for r, f in zip(uint8, rates)),
        "batch_rate": median(uint8, "rps") * 1000,
        "batch_ceiling": batch_ceiling,
        "forward_rate": statistics.median(rates),
        "startup_s": statistics.median(startups),
        "pss_mib": pss / 1024,
    })
    return summary


if __name__ == "__main__":
    main()
