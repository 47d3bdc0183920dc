"""Script-mode serving against AWS's MXNet serving stack, on the same model and machine, in the same run.

Two ways of serving the cnn, one image per request:
- "transform_fn": a user's inference script (rig.TRANSFORM_SCRIPT: model_fn loads the network as a Gluon block,
  transform_fn reads JSON pixels and answers the predicted labels as JSON), in `model/code/inference.py`;
- "default handlers": an empty script, so AWS's default MXNet handlers serve the model: JSON pixels shaped
  (1, 1, 28, 28) in, the network's raw scores out as JSON.
Each runs in our `serve` and in AWS's stack: Multi Model Server 1.1.11 with sagemaker-mxnet-inference 1.5.5 (its
handler service) and sagemaker-inference 1.6.1, started as their container starts it (config, environment,
PYTHONPATH), with Debian's Java, in a virtualenv made here (--aws-venv, pip from PyPI, pinned below). Both run
--workers Python workers and get the same body; their answers are compared byte for byte before anything is
timed. sagemaker-mxnet-inference 1.5.5 cannot serve with the default model_fn under sagemaker-inference 1.7 or
later (the newer toolkit passes its `context` where the MXNet handler takes a batch size), so the stack is pinned
to 1.6.1, the toolkit of the same months.

For the transform_fn the bare stack runs too: `gunicorn -w N script_app:app` (a Flask view calling the same
transform_fn), and the transform_fn alone in a loop in one process. CPU time per request of each process tree
(Java included) is shown: it moves far less than requests/s with other load. The target: at least 2x AWS's
requests/s at every concurrency.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from devkit import net
from devkit.project import ROOT
from devkit.servers import Server
from devkit.waiting import wait_until
from figures import Figure, at_least

from .rig import (
    CONCURRENCIES,
    INVOCATIONS,
    TRANSFORM_SCRIPT,
    Bench,
    ensure_program,
    first_answer,
    median,
    pair_ratio,
    plain_endpoint,
    post,
    python,
    serve_process,
    worker_environ,
)

AWS_STACK = ["multi-model-server==1.1.11", "sagemaker-mxnet-inference==1.5.5", "sagemaker-inference==1.6.1",
             "mxnet==1.9.1", "numpy==1.23.5"]
AWS_VENV = ROOT / ".bench-venv" / "aws-mxnet-serving"
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
        self.port, self.workers = low_free_port(), workers
        self.start(venv, work, log, MMS_CONFIG.format(workers=workers, port=self.port, management=low_free_port()),
                   {"SAGEMAKER_PROGRAM": program, "PYTHONPATH": str(model_dir / "code")},
                   ["--models", f"model={model_dir}"])

    def start(self, venv: Path, work: Path, log: Path, config_text: str, env: dict[str, str], arguments: list[str]
              ) -> None:
        """Multi Model Server on self.port with the properties `config_text`, `env` on top of its environment."""
        self.log = log
        config = work / f"mms-{self.port}.properties"
        config.write_text(config_text)
        tmp = work / f"mms-tmp-{self.port}"  # MMS keeps a pid file there: one per instance
        tmp.mkdir()
        environ = {**os.environ, **MXNET_ENV, "TMPDIR": str(tmp), "PATH": f"{venv / 'bin'}:{os.environ['PATH']}", **env}
        for name in ("MXNET_ENGINE_TYPE", "SAGEMAKER_BASE_DIR"):
            environ.pop(name, None)
        self.started = time.perf_counter()
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                [str(venv / "bin" / "multi-model-server"), "--start", "--foreground", "--mms-config", str(config),
                 "--model-store", "/", *arguments],
                env=environ, cwd=work, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_loaded(self, timeout: float = 120) -> None:
        """Until /ping answers 200 (MMS loads a worker's model at its first request: see `compare`)."""
        wait_until(lambda: net.status(self.url("/ping")) == 200, timeout, "Multi Model Server healthy",
                   process=self.process, details=self.tail)

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


def run(bench: Bench) -> list[Figure]:
    args = bench.args
    java = ensure_program("java", "default-jre-headless")  # Debian's Java, for Multi Model Server
    venv = ensure_aws_stack(args.aws_venv)
    images, labels = bench.test_set
    pixels = (images[0][None, None] / 255).round(4).tolist()  # one image, (1, 1, 28, 28), as AWS's handlers take it
    body = bench.body("aws-one.json", json.dumps(pixels).encode())
    print(f"model: {bench.model_dir()}; {args.workers} workers each; {args.rounds} rounds of {args.duration} s per "
          f"figure; {len(os.sched_getaffinity(0))} CPUs; {java}; load average {os.getloadavg()[0]:.2f}", flush=True)
    figures = []
    for way, script, program in (("transform_fn", TRANSFORM_SCRIPT, "inference.py"),
                                 ("default handlers", "", "empty.py")):
        if way in args.ways.split(","):
            model_dir = bench.work / way.replace(" ", "-") / "ml" / "model"
            shutil.copytree(bench.model_dir(), model_dir)
            (model_dir / "metadata.json").unlink()  # AWS's layout only: our own metadata plays no part
            (model_dir / "code").mkdir()
            (model_dir / "code" / program).write_text(script)
            figures += compare(bench, body, venv, model_dir, program, int(labels[0]), way)
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    return figures


def compare(bench: Bench, body: Path, venv: Path, model_dir: Path, program: str, label: int,
            way: str) -> list[Figure]:
    args, work, content = bench.args, bench.work, body.read_bytes()
    ours = serve_process(model_dir.parent, args.workers, work / f"serve-{way}.log", {"SAGEMAKER_PROGRAM": program})
    servers: list[Server] = [ours, AwsServer(venv, model_dir, program, args.workers, work, work / f"mms-{way}.log")]
    if way == "transform_fn":  # the floor of a gunicorn and Flask server around the same script
        servers.append(plain_endpoint(model_dir.parent, args.workers, work / f"bare-{way}.log", "script_app:app",
                                      Path(__file__).parent, **worker_environ(SCRIPT_APP_MODEL_DIR=str(model_dir),
                                                                              SAGEMAKER_PROGRAM=program)))
    try:
        mine, aws = (first_answer(server, content)[1] for server in servers[:2])
        for server in servers[:2]:
            server.wait_loaded()
        for bare in servers[2:]:
            if first_answer(bare, content)[1] != mine:
                sys.exit("the bare stack answers differently")
        for _ in range(2 * args.workers):  # MMS loads each worker's model at its first request
            post(servers[1].url(INVOCATIONS), content, "application/json", 30)
        print(f"\n=== {way} ===\n  answers: ours {mine[:80]!r}..., AWS's {aws[:80]!r}...: "
              f"{'identical' if mine == aws else 'DIFFERENT'}", flush=True)
        if way == "transform_fn" and json.loads(mine)["predictions"] != [{"label": label}]:
            sys.exit(f"wrong prediction {mine!r}: expected {label}")
        if mine != aws:
            sys.exit("the two stacks answer differently")
        runs = bench.alternate(servers, body, CONCURRENCIES)
    finally:
        bench.stop(servers)
    print(f"{'concurrency':>11} {'ours req/s':>10} {'p50 ms':>7} {'CPU us':>7} | {'AWS req/s':>9} {'p50 ms':>7} "
          f"{'CPU us':>7} | {'ratio':>5} {'CPU ratio':>9}")
    figures = []
    for c, (a, b, *_) in runs.items():
        ratio = pair_ratio(a, b)
        print(f"{c:>11} {median(a, 'rps'):>10.0f} {median(a, 'p50_ms'):>7.2f} {median(a, 'cpu_us'):>7.0f} | "
              f"{median(b, 'rps'):>9.0f} {median(b, 'p50_ms'):>7.2f} {median(b, 'cpu_us'):>7.0f} | {ratio:>5.2f} "
              f"{pair_ratio(b, a, 'cpu_us'):>9.2f}")
        figures.append(at_least(f"serving.aws.{way.replace(' ', '-')}.c{c}", f"{way}: one-image JSON at concurrency "
                                f"{c}, ours against AWS's MXNet serving stack", f"{median(a, 'rps'):,.0f} req/s",
                                f"AWS's {median(b, 'rps'):,.0f} req/s", ratio, TARGET))
    print("  (ratio: our requests/s over AWS's, median of adjacent runs; CPU ratio: AWS's CPU time per request, "
          "all its processes, over ours)")
    if len(servers) > 2:
        print("  the bare stack, `gunicorn -w N script_app:app` (a Flask view calling the same transform_fn), "
              "against AWS's and ours:")
        for c, (a, b, bare) in runs.items():
            print(f"{c:>11} {median(bare, 'rps'):>10.0f} req/s, {median(bare, 'cpu_us'):.0f} CPU us per request: "
                  f"{pair_ratio(bare, b):.2f} of AWS's; ours {pair_ratio(a, bare):.2f} of it")
        # CPU microseconds per call of the transform_fn on the body, our workers' MXNet settings, best of three.
        alone = min(float(python(HANDLER_ALONE, model_dir, program, body, 3, env=worker_environ(),
                                 what="the transform_fn alone").split()[-1]) for _ in range(3))
        bounds = ", ".join(f"{median(b, 'cpu_us') / alone:.2f} at {c}" for c, (a, b, *_) in runs.items())
        beyond = ", ".join(f"{median(a, 'cpu_us') - alone:.0f}" for a, *_ in runs.values())
        print(f"  the transform_fn alone, called in a loop in one process: {alone:.0f} CPU us per call. AWS's CPU per "
              f"request over it, the most a server with no cost of its own could reach by CPU: {bounds}; ours "
              f"spends {beyond} us per request beyond it")
    return figures
