#!/usr/bin/env python3
"""Script-mode serving against AWS's MXNet serving stack, on the same model and machine, in the same run.

Two ways of serving the default MNIST cnn (trained by `container/train`, --epochs), one image per request:
- "transform_fn": a user's inference script (serve_bench.TRANSFORM_SCRIPT: model_fn loads the network as a
  Gluon block, transform_fn reads JSON pixels and answers the predicted labels as JSON), in
  `model/code/inference.py`;
- "default handlers": an empty script, so AWS's default MXNet handlers serve the model: JSON pixels shaped
  (1, 1, 28, 28) in, the network's raw scores out as JSON.
Each runs in our `serve` (gunicorn, its production settings) and in AWS's stack: Multi Model Server 1.1.11
with sagemaker-mxnet-inference 1.5.5 (its handler service) and sagemaker-inference 1.6.1, started as their
container starts it (config, environment, PYTHONPATH), with Debian's Java. That stack lives in a virtualenv
this script makes (--aws-venv, pip from PyPI, pinned below; Java from apt-get when missing). Both servers
run 2 Python workers (--workers) and get the same request body; their answers are compared byte for byte
before anything is timed.

Note: sagemaker-mxnet-inference 1.5.5 with sagemaker-inference 1.7 or later cannot serve with the default
model_fn (the newer toolkit passes its `context` where the MXNet handler takes a batch size), so the stack
is pinned to 1.6.1, the toolkit of the same months.

Each figure is the median of --rounds runs of --duration seconds; the two servers run in alternation, so a
ratio is the median of adjacent pairs. CPU time per request of each process tree (Java included) is shown
too: it moves far less than requests/s with other load on a shared machine. The target: at least 2x AWS's
requests/s at every concurrency.
Usage: .venv/bin/python bench/script_serve_bench.py [--duration 5] [--rounds 3] [--workers 2] [--ways transform_fn]
"""

from __future__ import annotations

import argparse
import json
import os
import random
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

from devkit.project import ROOT
from devkit.servers import Server
from mxnet_byoc.train import data as idx  # numpy only
from serve_bench import (
    INVOCATIONS,
    TRANSFORM_SCRIPT,
    WRK_SCRIPT,
    ensure_program,
    ensure_wrk,
    median,
    mnist_dir,
    plain_endpoint,
    post,
    run_wrk,
    serve_process,
    train_model,
    worker_environ,
)

AWS_STACK = ["multi-model-server==1.1.11", "sagemaker-mxnet-inference==1.5.5", "sagemaker-inference==1.6.1",
             "mxnet==1.9.1", "numpy==1.23.5"]
CONCURRENCY = (1, 8, 32)
TARGET = 2.0

# What the MXNet container's entry point writes (sagemaker_inference.model_server) for one model.
MMS_CONFIG = """\
enable_envvars_config=true
decode_input_request=false
load_models=ALL
default_response_timeout=60
default_workers_per_model={workers}
inference_address=http://127.0.0.1:{port}
management_address=http://127.0.0.1:{management}
vmargs=-XX:-UseContainerSupport
default_service_handler=sagemaker_mxnet_serving_container.handler_service:handle
"""
# sagemaker_mxnet_serving_container.serving sets these for its workers.
MXNET_ENV = {"MXNET_CPU_WORKER_NTHREADS": "1", "MXNET_CPU_PRIORITY_NTHREADS": "1",
             "MXNET_KVSTORE_REDUCTION_NTHREADS": "1", "OMP_NUM_THREADS": "1"}


# The user's transform_fn alone, in one process: the part of a request that no server can make cheaper.
HANDLER_ALONE = """
import importlib.util, sys, time
model_dir, program, body_path, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
spec = importlib.util.spec_from_file_location("user_script", f"{model_dir}/code/{program}")
script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(script)
model, body = script.model_fn(model_dir), open(body_path, "rb").read()
for _ in range(100):
    script.transform_fn(model, body, "application/json", "application/json")
n, start = 0, time.thread_time()
while time.thread_time() - start < seconds:
    script.transform_fn(model, body, "application/json", "application/json")
    n += 1
print((time.thread_time() - start) / n * 1e6)
"""


def handler_alone_cpu_us(model_dir: Path, program: str, body: Path, seconds: float = 3) -> float:
    """CPU microseconds per call of the user's transform_fn on `body`, in one process with our workers' MXNet
    settings (the best of three runs)."""
    env = worker_environ()
    figures = []
    for _ in range(3):
        result = subprocess.run([sys.executable, "-c", HANDLER_ALONE, str(model_dir), program, str(body), str(seconds)],
                                capture_output=True, text=True, env=env)
        if result.returncode != 0:
            sys.exit(f"the transform_fn alone failed:\n{result.stderr[-2000:]}")
        figures.append(float(result.stdout.split()[-1]))
    return min(figures)


def ensure_aws_stack(venv: Path) -> Path:
    """The virtualenv with AWS's MXNet serving stack, made (and kept) at `venv`."""
    stamp = venv / ".installed"
    if stamp.is_file() and stamp.read_text().split() == AWS_STACK:
        return venv
    print(f"making {venv} with {', '.join(AWS_STACK)} (pip, PyPI) ...", flush=True)
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    result = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", *AWS_STACK],
                            capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"pip could not install AWS's stack:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    stamp.write_text("\n".join(AWS_STACK))
    return venv


def low_free_port() -> int:
    """A free port below 32768: Multi Model Server refuses higher ones ("Invalid port number")."""
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(20000, 32768)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    sys.exit("no free port below 32768")


class AwsServer(Server):
    """Multi Model Server with AWS's MXNet handler service, as AWS's MXNet inference container runs it."""

    def __init__(self, venv: Path, model_dir: Path, program: str, workers: int, work: Path, log: Path):
        self.port, self.workers, self.log = low_free_port(), workers, log
        config = work / f"mms-{self.port}.properties"
        config.write_text(MMS_CONFIG.format(workers=workers, port=self.port, management=low_free_port()))
        tmp = work / f"mms-tmp-{self.port}"  # MMS keeps a pid file there: one per instance
        tmp.mkdir()
        env = {**os.environ, **MXNET_ENV, "SAGEMAKER_PROGRAM": program, "TMPDIR": str(tmp),
               "PYTHONPATH": str(model_dir / "code"), "PATH": f"{venv / 'bin'}:{os.environ['PATH']}"}
        for name in ("MXNET_ENGINE_TYPE", "SAGEMAKER_BASE_DIR"):
            env.pop(name, None)
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            [str(venv / "bin" / "multi-model-server"), "--start", "--foreground", "--mms-config", str(config),
             "--model-store", "/", "--models", f"model={model_dir}"],
            env=env, cwd=work, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)

    def wait_loaded(self, timeout: float = 120) -> None:
        """Until every worker has answered once (MMS loads a worker's model at its first request)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url("/ping"), timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (OSError, urllib.error.HTTPError):
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        sys.exit(f"Multi Model Server did not become healthy:\n{self.log.read_text()[-3000:]}")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM to the whole process group (the launcher, Java and the Python workers), then SIGKILL."""
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and _group_alive(self.process.pid):
                time.sleep(0.1)
            if _group_alive(self.process.pid):
                os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return self.process.wait()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def model_copies(trained: Path, work: Path) -> dict[str, tuple[Path, str]]:
    """The trained model as each way serves it: with the user's script, and with an empty one."""
    copies = {}
    for way, script, program in (("transform_fn", TRANSFORM_SCRIPT, "inference.py"),
                                 ("default handlers", "", "empty.py")):
        model_dir = work / way.replace(" ", "-") / "ml" / "model"
        shutil.copytree(trained, model_dir)
        (model_dir / "metadata.json").unlink()  # AWS's layout only: our own metadata plays no part
        (model_dir / "code").mkdir()
        (model_dir / "code" / program).write_text(script)
        copies[way] = (model_dir, program)
    return copies


def first_answer(server: Server, body: bytes, limit: float = 120) -> bytes:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            sys.exit(f"the server exited:\n{server.log.read_text()[-3000:]}")
        try:
            status, answer = post(server.url(INVOCATIONS), body, "application/json", 10)
            if status == 200:
                return answer
        except OSError:
            pass
        time.sleep(0.05)
    sys.exit(f"no answer within {limit} s:\n{server.log.read_text()[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--model-dir", type=Path, help="a cnn model directory from container/train, instead of "
                        "training one")
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs per figure (the median is shown)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--ways", default="transform_fn,default handlers", help="which ways, comma-separated")
    parser.add_argument("--aws-venv", type=Path, default=ROOT / ".bench-venv" / "aws-mxnet-serving")
    args = parser.parse_args()

    wrk = ensure_wrk()
    java = ensure_program("java", "default-jre-headless")  # Debian's Java, for Multi Model Server
    venv = ensure_aws_stack(args.aws_venv)
    work = Path(tempfile.mkdtemp(prefix="script-serve-bench-"))
    try:
        trained = args.model_dir or train_model(work / "train", "cnn", args.epochs)
        images = idx.read_idx(mnist_dir() / "t10k-images-idx3-ubyte.gz").reshape(-1, 1, 1, 28, 28)
        labels = idx.read_idx(mnist_dir() / "t10k-labels-idx1-ubyte.gz")
        pixels = (images[0] / 255).round(4).tolist()  # one image, (1, 1, 28, 28), as AWS's handlers take it
        body = work / "one.json"
        body.write_text(json.dumps(pixels))
        script = work / "post.lua"
        script.write_text(WRK_SCRIPT)
        model = args.model_dir or f"{args.epochs}-epoch cnn from container/train"
        print(f"model: {model}; {args.workers} workers each; {args.rounds} rounds of {args.duration} s per figure; "
              f"{len(os.sched_getaffinity(0))} CPUs; {java}; "
              f"load average {os.getloadavg()[0]:.2f}", flush=True)
        results = {}
        for way, (model_dir, program) in model_copies(trained, work).items():
            if way not in args.ways.split(","):
                continue
            results[way] = compare(args, wrk, script, body, venv, model_dir, program, work, int(labels[0]), way)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nagainst the target (at least {TARGET:.0f}x AWS's requests/s at every concurrency):")
    for way, lowest in results.items():
        print(f"  {way}: lowest ratio {lowest:.2f} ({'met' if lowest >= TARGET else 'NOT met'})")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


def bare_stack(model_dir: Path, program: str, workers: int, log: Path) -> Server:
    """`gunicorn -w N script_app:app` (gunicorn's defaults but for the port) around the user's script, with our
    workers' MXNet settings and allocator (serve_bench.worker_environ), so that the script costs what it costs in
    ours."""
    return plain_endpoint(model_dir.parent, workers, log, "script_app:app",
                          **worker_environ(SCRIPT_APP_MODEL_DIR=str(model_dir), SAGEMAKER_PROGRAM=program))


def compare(args: argparse.Namespace, wrk: str, script: Path, body: Path, venv: Path, model_dir: Path,
            program: str, work: Path, label: int, way: str) -> float:
    ours = serve_process(model_dir.parent, args.workers, work / f"serve-{way}.log", {"SAGEMAKER_PROGRAM": program})
    theirs = AwsServer(venv, model_dir, program, args.workers, work, work / f"mms-{way}.log")
    servers: list[Server] = [ours, theirs]
    if way == "transform_fn":  # the floor of a gunicorn and Flask server around the same script
        servers.append(bare_stack(model_dir, program, args.workers, work / f"bare-{way}.log"))
    runs: dict[int, list[list]] = {c: [[] for _ in servers] for c in CONCURRENCY}
    try:
        mine, aws = first_answer(ours, body.read_bytes()), first_answer(theirs, body.read_bytes())
        ours.wait_loaded()
        theirs.wait_loaded()
        for bare in servers[2:]:
            if first_answer(bare, body.read_bytes()) != mine:
                sys.exit("the bare stack answers differently")
        for _ in range(2 * args.workers):  # MMS loads each worker's model at its first request
            post(theirs.url(INVOCATIONS), body.read_bytes(), "application/json", 30)
        print(f"\n=== {way} ===\n  answers: ours {mine[:80]!r}..., AWS's {aws[:80]!r}...: "
              f"{'identical' if mine == aws else 'DIFFERENT'}", flush=True)
        if way == "transform_fn" and json.loads(mine)["predictions"] != [{"label": label}]:
            sys.exit(f"wrong prediction {mine!r}: expected {label}")
        if mine != aws:
            sys.exit("the two stacks answer differently")
        for _ in range(args.rounds):
            for c, runs_of in runs.items():
                for server, server_runs in zip(servers, runs_of):
                    server_runs.append(run_wrk(wrk, script, server, body, "application/json", c, args.duration))
    finally:
        for server in servers:
            server.stop()
    print(f"{'concurrency':>11} {'ours req/s':>10} {'p50 ms':>7} {'CPU us':>7} | {'AWS req/s':>9} {'p50 ms':>7} "
          f"{'CPU us':>7} | {'ratio':>5} {'CPU ratio':>9}")
    ratios = []
    for c, (a, b, *_) in runs.items():
        ratio = statistics.median(x["rps"] / y["rps"] for x, y in zip(a, b))
        cpu_ratio = statistics.median(y["cpu_us"] / x["cpu_us"] for x, y in zip(a, b))
        ratios.append(ratio)
        print(f"{c:>11} {median(a, 'rps'):>10.0f} {median(a, 'p50_ms'):>7.2f} {median(a, 'cpu_us'):>7.0f} | "
              f"{median(b, 'rps'):>9.0f} {median(b, 'p50_ms'):>7.2f} {median(b, 'cpu_us'):>7.0f} | {ratio:>5.2f} "
              f"{cpu_ratio:>9.2f}")
    print("  (ratio: our requests/s over AWS's, median of adjacent runs; CPU ratio: AWS's CPU time per request, "
          "all its processes, over ours)")
    if len(servers) > 2:
        print("  the bare stack, `gunicorn -w N script_app:app` (a Flask view calling the same transform_fn), "
              "against AWS's and ours:")
        for c, (a, b, bare) in runs.items():
            print(f"{c:>11} {median(bare, 'rps'):>10.0f} req/s, {median(bare, 'cpu_us'):.0f} CPU us per request: "
                  f"{statistics.median(x['rps'] / y['rps'] for x, y in zip(bare, b)):.2f} of AWS's; ours "
                  f"{statistics.median(x['rps'] / y['rps'] for x, y in zip(a, bare)):.2f} of it")
        alone = handler_alone_cpu_us(model_dir, program, body)
        bounds = ", ".join(f"{median(b, 'cpu_us') / alone:.2f} at {c}" for c, (a, b, *_) in runs.items())
        beyond = ", ".join(f"{median(a, 'cpu_us') - alone:.0f}" for a, *_ in runs.values())
        print(f"  the transform_fn alone, called in a loop in one process: {alone:.0f} CPU us per call. AWS's CPU per "
              f"request over it, the most a server with no cost of its own could reach by CPU: {bounds}; ours "
              f"spends {beyond} us per request beyond it")
    return min(ratios)


if __name__ == "__main__":
    main()
