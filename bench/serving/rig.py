"""The serving bench's shared set-up: models trained once, the servers (`serve` with its production settings,
the plain endpoint), request bodies, and wrk runs measured in server CPU per request as well as requests/s.

Shared machines are noisy: a figure is the median of several short runs, servers compared with each other are
measured in alternation (who goes first alternates by round) and a ratio is the median over adjacent pairs.
Server CPU time per request moves far less with other load than requests/s do.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import orjson

from devkit import datasets, idx, jobs, net
from devkit.project import ROOT
from devkit.servers import Server
from mxnet_byoc.serve import allocator
from mxnet_byoc.serve.settings import WORKER_ENV_DEFAULTS

CONCURRENCIES = (1, 8, 32)
INVOCATIONS = "/invocations"
BENCH = ROOT / "bench"

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

# A user's inference module for the digit networks, as a user would write it for AWS's MXNet container: the
# network as a Gluon block; JSON pixels ({"instances": ...} or a bare array, 0-255 or 0-1) or npy batches (uint8
# or float32) in, labels out.
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

# One-image JSON req/s over the plain endpoint's, at every concurrency, for the built-in models.
TARGET_ONE_IMAGE = {"mlp": 0.80, "cnn": 0.70}


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


def train_model(base: Path, model: str, epochs: int) -> Path:
    """A model directory from `container/train` on MNIST's training channel, in a job folder at `base`."""
    jobs.make_job(base, datasets.find_mnist(), {"model": model, "epochs": str(epochs)}, channels=("training",),
                  link=True)
    print(f"training a {epochs}-epoch {model} with container/train ...", flush=True)
    run = jobs.run_train(base)
    if run.returncode != 0:
        sys.exit(f"container/train failed:\n{run.log[-4000:]}")
    print(f"  trained in {run.seconds:.1f} s", flush=True)
    return base / "model"


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


def median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def pair_ratio(mine: list[dict[str, float]], theirs: list[dict[str, float]], key: str = "rps") -> float:
    """The median over adjacent runs of mine[key] / theirs[key]."""
    return statistics.median(m[key] / t[key] for m, t in zip(mine, theirs))


def worker_environ(**extra: str) -> dict[str, str]:
    """This environment as `serve` gives it to its workers (their MXNet settings and allocator), `extra` on top."""
    return allocator.with_allocator({**os.environ, **WORKER_ENV_DEFAULTS, **extra})


def python(code: str, *argv: object, env: dict[str, str] | None = None, what: str = "a bench step") -> str:
    """The stdout of `code` run by this interpreter in a process of its own; exits with its stderr on failure."""
    result = subprocess.run([sys.executable, "-c", code, *map(str, argv)], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        sys.exit(f"{what} failed:\n{result.stderr[-2000:]}")
    return result.stdout


def post(url: str, body: bytes, content_type: str, timeout: float = 5.0) -> tuple[int, bytes]:
    return net.request(url, body, {"Content-Type": content_type}, timeout)


def serve_process(base: Path, workers: int, log: Path, env: dict[str, str] | None = None) -> Server:
    """`container/serve` on `base` with its production settings, `workers` workers and `env` on top."""
    return Server(base, log, SAGEMAKER_MODEL_SERVER_WORKERS=str(workers), **(env or {}))


def plain_endpoint(base: Path, workers: int, log: Path, app: str = "trivial_app:app", chdir: Path = BENCH,
                   **env: str) -> Server:
    """`gunicorn -w N APP` for an app in `chdir` (default bench/trivial_app.py): gunicorn's defaults but for the
    port; `env` on top of this environment."""
    port = net.free_port()
    command = [sys.executable, "-m", "gunicorn", "--chdir", str(chdir), "-w", str(workers), "-b", f"127.0.0.1:{port}",
               app]
    return Server(base, log, command, port=port, SAGEMAKER_MODEL_SERVER_WORKERS=str(workers), **env)


def first_answer(server: Server, body: bytes, label: int | None = None, limit: float = 120) -> tuple[float, bytes]:
    """Seconds from the server's start to its first 200 for `body` (whose first prediction is `label`, when
    given), and that answer."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            sys.exit(f"the server exited with {server.process.returncode}:\n{server.log.read_text()[-3000:]}")
        try:
            status, answer = post(server.url(INVOCATIONS), body, "application/json", 10)
            if status == 200 and (label is None or json.loads(answer)["predictions"][0]["label"] == label):
                return time.perf_counter() - server.started, answer
        except OSError:
            pass
        time.sleep(0.005)
    sys.exit(f"no correct answer within {limit:g} s:\n{server.log.read_text()[-3000:]}")


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
            duration: float) -> dict[str, float]:
    """One wrk run: requests/s, p50 and p99 latency, and the server's CPU microseconds per request."""
    env = {**os.environ, "BENCH_BODY": str(body), "BENCH_CONTENT_TYPE": content_type}
    cpu_before = server.cpu_seconds()
    result = subprocess.run(wrk_command(wrk, script, server, connections, duration), env=env, capture_output=True,
                            text=True, check=True)
    cpu = server.cpu_seconds() - cpu_before
    requests, seconds, p50, p99 = wrk_result(result.stdout)
    return {"rps": requests / seconds, "p50_ms": p50, "p99_ms": p99, "cpu_us": cpu / requests * 1e6}


@dataclass
class Subject:
    """What is served and how it is measured: a model directory under `base`, and the environment for `serve`."""

    name: str
    base: Path
    target: float | None  # one-image JSON req/s over the plain endpoint's (None: no target, shown only)
    label: str
    env: dict[str, str] = field(default_factory=dict)
    digit: bytes = b""  # one-image JSON of a test digit this model gets right, and its label
    digit_label: int | None = None

    @property
    def built_in(self) -> bool:
        """Our own digit path (no user script), whose start-up phases can be timed in one process."""
        return "SAGEMAKER_PROGRAM" not in self.env

    @property
    def model_dir(self) -> Path:
        return self.base / "model"


class Bench:
    """What the modes share: the options, a work folder, wrk, MNIST's test set as request bodies, and the models,
    each trained once by `container/train`."""

    def __init__(self, args: argparse.Namespace, work: Path):
        self.args, self.work = args, work

    @cached_property
    def wrk(self) -> str:
        return ensure_wrk()

    @cached_property
    def script(self) -> Path:
        """wrk's script: POSTs $BENCH_BODY as $BENCH_CONTENT_TYPE and prints one BENCH_RESULT line."""
        path = self.work / "post.lua"
        path.write_text(WRK_SCRIPT)
        return path

    @cached_property
    def test_set(self) -> tuple[np.ndarray, np.ndarray]:
        """MNIST's first 1,000 test images (N, 28, 28) uint8 and their labels."""
        return idx.mnist_arrays(datasets.find_mnist(), "test", 1000)

    def body(self, name: str, content: bytes) -> Path:
        """A request body as a file for wrk."""
        path = self.work / name
        path.write_bytes(content)
        return path

    @cached_property
    def batches(self) -> dict[str, Path]:
        """The 1,000-image application/x-npy bodies: uint8 (0.8 MB) and float32 (3.1 MB)."""
        images = self.test_set[0]
        paths = {"uint8": self.work / "batch-uint8.npy", "float32": self.work / "batch-float32.npy"}
        np.save(paths["uint8"], images)
        np.save(paths["float32"], images.astype(np.float32) / 255)
        return paths

    @functools.cache  # noqa: B019 (one Bench per run)
    def trained(self, model: str) -> Path:
        """A job folder whose model/ `container/train` trained (--epochs, MNIST's training channel), once per run."""
        return train_model(self.work / f"trained-{model}", model, self.args.epochs).parent

    def model_dir(self) -> Path:
        """The one model of the modes that serve one (--model-dir, else the first of --models, trained)."""
        return self.args.model_dir or self.trained(self.args.models.split(",")[0]) / "model"

    def one_image_folder(self, name: str) -> tuple[Path, Path]:
        """A folder `name` whose model/ is model_dir() (a SAGEMAKER_BASE_DIR for `serve`), and a body in it of
        random_digit_json()."""
        (self.work / name).mkdir()
        return self.work / name, one_image_folder(self.work / name, self.model_dir())[1]

    @cached_property
    def subjects(self) -> list[Subject]:
        """The built-in models (or --model-dir, with the mlp's target), then the mlp (or --model-dir) through a
        user's `model_fn` and `transform_fn` (model/code/inference.py, as the SDK repacks an entry_point)."""
        subjects = []
        if self.args.model_dir:
            shutil.copytree(self.args.model_dir, self.work / "given" / "model")
            subjects.append(Subject("given", self.work / "given", TARGET_ONE_IMAGE["mlp"], str(self.args.model_dir)))
        for name in [] if self.args.model_dir else self.args.models.split(","):
            subjects.append(Subject(name, self.trained(name), TARGET_ONE_IMAGE[name],
                                    f"{self.args.epochs}-epoch {name} from container/train"))
        mlp = next((s for s in subjects if s.name in ("mlp", "given")), None)
        if mlp:
            code = self.work / "transform_fn" / "model" / "code"
            shutil.copytree(mlp.model_dir, code.parent)
            code.mkdir()
            (code / "inference.py").write_text(TRANSFORM_SCRIPT)
            subjects.append(Subject("transform_fn", code.parents[1], None, "the same mlp through a user's transform_fn "
                                    "(model/code/inference.py)", env={"SAGEMAKER_PROGRAM": "inference.py"}))
        return subjects

    def serve(self, subject: Subject, log: str) -> Server:
        """`serve` on the subject, every worker loaded and answering its digit right. The first time, the digit is
        found through the server: the first of MNIST's test digits that it gets right in a 1,000-image batch."""
        server = serve_process(subject.base, self.args.workers, self.work / f"{subject.name}-{log}", subject.env)
        try:
            if not subject.digit:
                images, labels = self.test_set
                first_answer(server, json.dumps({"instances": [images[0].tolist()]}).encode())
                server.wait_loaded()
                status, answer = post(server.url(INVOCATIONS), self.batches["uint8"].read_bytes(),
                                      "application/x-npy", 30)
                if status != 200:
                    sys.exit(f"the server answered {status}: {answer[:500]!r}")
                found = np.array([p["label"] for p in json.loads(answer)["predictions"]])
                print(f"{subject.name}: accuracy through the server on 1,000 test digits: "
                      f"{np.mean(found == labels):.3f}")
                pick = int(np.flatnonzero(found == labels)[0])
                subject.digit = json.dumps({"instances": [images[pick].tolist()]}).encode()
                subject.digit_label = int(labels[pick])
            first_answer(server, subject.digit, subject.digit_label)
            server.wait_loaded()
        except BaseException:
            server.stop()
            raise
        return server

    def alternate(self, servers: Sequence[Server], body: Path, concurrencies: Sequence[int],
                  content_type: str = "application/json") -> dict[int, list[list[dict[str, float]]]]:
        """--rounds wrk runs of --duration seconds per server and concurrency, the servers in alternation (the
        order reversed every other round): {concurrency: [runs of each server, in the order given]}."""
        runs = {c: [[] for _ in servers] for c in concurrencies}
        for round_ in range(self.args.rounds):
            for c in concurrencies:
                order = list(zip(servers, runs[c]))
                for server, server_runs in order if round_ % 2 == 0 else order[::-1]:
                    server_runs.append(run_wrk(self.wrk, self.script, server, body, content_type, c,
                                               self.args.duration))
        return runs

    def stop(self, servers: Sequence[Server]) -> None:
        for server in servers:
            server.stop()
