"""`make demo`: build the CPU image, train it on MNIST, serve the model and query it over HTTP.

    python -m devkit.demo [--no-docker] [--epochs N] [--keep] [--image TAG]

With a Docker engine (started through scripts/ensure-docker.sh when none answers) it runs the image
as SageMaker does: `docker run -v TMP:/opt/ml IMAGE train`, then `docker run IMAGE serve` on the
model directory. Without one it runs the same `container/train` and `container/serve` from the
project's virtualenv with SAGEMAKER_BASE_DIR=TMP, and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from byoctl import mnist
from devkit import KitError, bodies, datasets, idx, jobs, net, project
from devkit.docker import CPU_IMAGE, docker_command
from devkit.servers import ContainerServer, Server

ENSURE_DOCKER = project.SCRIPTS / "ensure-docker.sh"
DEFAULT_IMAGE = CPU_IMAGE  # the Makefile's tag, so `make demo CPU_IMAGE=...` agrees with `make image-cpu`
JSON_DIGITS = 8  # test digits sent in the JSON request
PNG_DIGIT = JSON_DIGITS  # the next one goes as a PNG
NPY_BATCH = 1000  # images per application/x-npy request (about 0.8 MB, far below SageMaker's 6 MB)
PING_TIMEOUT_S = 180.0


class DemoError(Exception):
    """A step of the demo failed; the message says which and why."""


def say(message: str = "") -> None:
    print(message, flush=True)


def step(title: str) -> None:
    say(f"\n== {title}")


# --- where train and serve run ------------------------------------------------------------------


def _docker_engine_up() -> bool:
    if shutil.which("docker") is None:
        return False
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    return subprocess.run(["docker", "info"], **quiet).returncode == 0


def docker_available() -> tuple[bool, str]:
    """Whether a Docker engine answers, starting one through scripts/ensure-docker.sh if need be."""
    if _docker_engine_up():
        return True, "the Docker engine is running"
    if not ENSURE_DOCKER.is_file():
        return False, "no Docker engine answers and scripts/ensure-docker.sh is missing"
    say("No Docker engine answers: trying scripts/ensure-docker.sh")
    result = subprocess.run(["bash", str(ENSURE_DOCKER)])
    if result.returncode == 0 and _docker_engine_up():
        return True, "started the Docker engine with scripts/ensure-docker.sh"
    return False, f"no Docker engine answers and scripts/ensure-docker.sh failed (exit {result.returncode})"


class Backend:
    """Runs `train` to completion and `serve` in the background against a SageMaker-style base dir."""

    description = ""

    def prepare(self) -> None:
        pass

    def train(self, base: Path) -> None:
        raise NotImplementedError

    def start_server(self, base: Path) -> Server | ContainerServer:
        raise NotImplementedError

    def command_line(self, server: Server | ContainerServer) -> str:
        return " ".join(server.command)


class DockerBackend(Backend):
    def __init__(self, image: str):
        self.image = image
        self.description = f"Docker (image {image})"
        # Files the container writes into the mounted folder should belong to the caller, so the
        # temp dir can be removed without root. As root (the usual case here) nothing changes.
        root = os.getuid() == 0
        self.user = None if root else f"{os.getuid()}:{os.getgid()}"
        self.env = {} if root else {"HOME": "/tmp"}

    def prepare(self) -> None:
        # The Makefile owns the build command; make keeps the image current when the code changes.
        _run(["make", "-C", str(project.ROOT), "image-cpu", f"CPU_IMAGE={self.image}"], "building the CPU image")

    def train(self, base: Path) -> None:
        _run(docker_command(self.image, "train", mounts={base: "/opt/ml"}, user=self.user, env=self.env),
             "training in the container")

    def start_server(self, base: Path) -> ContainerServer:
        # Stopped by `docker stop` (SIGTERM, as SageMaker scales in), then removed.
        return ContainerServer(self.image, base / "model", user=self.user, env=self.env, log=base / "serve.log")


class VenvBackend(Backend):
    def __init__(self) -> None:
        self.python = str(project.python_bin() / "python")
        self.description = f"the project's virtualenv ({self.python})"

    def train(self, base: Path) -> None:
        _run([str(project.TRAIN)], "training in the virtualenv", env=jobs.train_env(base))

    def start_server(self, base: Path) -> Server:
        return Server(base, base / "serve.log")

    def command_line(self, server: Server) -> str:
        return f"SAGEMAKER_BASE_DIR={server.base} SAGEMAKER_BIND_TO_PORT={server.port} {' '.join(server.command)}"


def _run(cmd: Sequence[str], what: str, env: dict[str, str] | None = None) -> None:
    say(f"$ SAGEMAKER_BASE_DIR={env['SAGEMAKER_BASE_DIR']} {' '.join(cmd)}" if env else "$ " + " ".join(cmd))
    try:
        result = subprocess.run(list(cmd), env=env)
    except FileNotFoundError as e:
        raise DemoError(f"{what} failed: {cmd[0]} is not installed ({e})") from e
    if result.returncode != 0:
        raise DemoError(f"{what} failed (exit {result.returncode}): {' '.join(cmd)}")


# --- talking to the server --------------------------------------------------------------------


def invoke(url: str, body: bytes, content_type: str) -> list[dict[str, Any]]:
    try:
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        status, answer = net.request(url + "/invocations", body, headers, timeout=60)
        if status != 200:
            raise DemoError(f"POST /invocations ({content_type}) answered HTTP {status}: "
                            f"{answer[:500].decode(errors='replace')}")
        payload = json.loads(answer)
    except (OSError, ValueError) as e:
        raise DemoError(f"POST /invocations ({content_type}) failed: {e}") from e
    predictions = payload.get("predictions") if isinstance(payload, dict) else None
    if not isinstance(predictions, list) or not all(
        isinstance(p, dict) and "label" in p and "probabilities" in p for p in predictions
    ):
        raise DemoError(f"unexpected response to {content_type}: {str(payload)[:300]}")
    return predictions


def _same(label: Any, truth: Any) -> bool:
    return str(label) == str(truth)


def show(prediction: dict[str, Any], truth: Any, what: str) -> bool:
    ok = _same(prediction["label"], truth)
    confidence = max(prediction["probabilities"])
    say(f"  {what:<22} predicted {prediction['label']!s:>2}  (p={confidence:.3f})   "
        f"true {truth!s:>2}   {'ok' if ok else 'WRONG'}")
    return ok


def ascii_digit(image: np.ndarray) -> str:
    shades = " .:-=+*#%@"
    rows = [row for row in image[::2] if row.any()]  # every other row: terminal cells are twice as tall
    return "\n".join("    " + "".join(shades[int(v) * (len(shades) - 1) // 255] * 2 for v in row)
                     for row in rows)


def query(url: str, images: np.ndarray, labels: np.ndarray, base: Path) -> dict[str, float]:
    step(f"JSON request: {JSON_DIGITS} test digits as 28x28 pixel lists (application/json)")
    body = json.dumps({"instances": images[:JSON_DIGITS].tolist()}).encode()
    predictions = invoke(url, body, "application/json")
    if len(predictions) != JSON_DIGITS:
        raise DemoError(f"sent {JSON_DIGITS} digits but got {len(predictions)} predictions")
    for i, (p, truth) in enumerate(zip(predictions, labels[:JSON_DIGITS], strict=True)):
        show(p, int(truth), f"test digit #{i}")

    step(f"PNG request: test digit #{PNG_DIGIT} as a 28x28 greyscale PNG (image/png)")
    png = bodies.png(images[PNG_DIGIT])
    (base / f"digit-{PNG_DIGIT}.png").write_bytes(png)
    say(ascii_digit(images[PNG_DIGIT]))
    (prediction,) = invoke(url, png, "image/png")
    show(prediction, int(labels[PNG_DIGIT]), f"digit-{PNG_DIGIT}.png")

    step(f"Test accuracy over HTTP: {len(images)} digits in batches of {NPY_BATCH} (application/x-npy)")
    start = time.monotonic()
    correct = 0
    for i in range(0, len(images), NPY_BATCH):
        chunk, truth = images[i:i + NPY_BATCH], labels[i:i + NPY_BATCH]
        batch = invoke(url, bodies.npy(chunk), "application/x-npy")
        if len(batch) != len(chunk):
            raise DemoError(f"batch at {i}: {len(batch)} predictions for {len(chunk)} images")
        correct += sum(_same(p["label"], int(t)) for p, t in zip(batch, truth, strict=True))
    elapsed = time.monotonic() - start
    accuracy = correct / len(images)
    say(f"  test accuracy through HTTP: {accuracy:.2%} ({correct}/{len(images)}; "
        f"{len(images) / elapsed:,.0f} images/s over {-(-len(images) // NPY_BATCH)} requests)")
    return {"accuracy": accuracy}


def print_metrics(base: Path, http_accuracy: float) -> None:
    step("Training metrics (output/data/metrics.json)")
    path = base / "output" / "data" / "metrics.json"
    if not path.is_file():
        say(f"  {path} was not written")
        return
    metrics = json.loads(path.read_text())
    say(_indent(json.dumps(metrics, indent=2, sort_keys=True)))
    reported = _find(metrics, "test_accuracy")
    if isinstance(reported, int | float):
        say(f"  test_accuracy reported by training: {reported:.2%}; "
            f"measured through HTTP: {http_accuracy:.2%}")


def _find(obj: Any, key: str) -> Any:
    """The first value under `key` anywhere in a nested JSON object (the file's layout may grow)."""
    if isinstance(obj, dict):
        if key in obj:
            return obj[key]
        for value in obj.values():
            found = _find(value, key)
            if found is not None:
                return found
    elif isinstance(obj, list):
        for value in reversed(obj):
            found = _find(value, key)
            if found is not None:
                return found
    return None


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


# --- the demo ---------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> None:
    timings: dict[str, float] = {}
    started = clock = time.monotonic()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.monotonic()
        timings[name] = now - clock
        clock = now

    step("Where train and serve run")
    if args.no_docker:
        backend: Backend = VenvBackend()
        say(f"--no-docker: running container/train and container/serve from {backend.description}")
    else:
        up, reason = docker_available()
        if up:
            backend = DockerBackend(args.image)
            say(f"{reason}: running the image {args.image}")
        else:
            backend = VenvBackend()
            say(f"{reason}.\nNO DOCKER: running the same container/train and container/serve from "
                f"{backend.description} instead of the image")
    if isinstance(backend, DockerBackend):
        step("Building the CPU image")
        backend.prepare()
        lap("image build")

    step("MNIST")
    data = datasets.find_mnist(log=lambda m: say("  " + m))
    say(f"  using {data}" + (" (MNIST_DIR)" if os.environ.get(mnist.MNIST_DIR_ENV) else ""))
    images, labels = idx.mnist_arrays(data, "test")
    lap("data")

    base = Path(tempfile.mkdtemp(prefix="mxnet-byoc-demo-"))
    server: Server | ContainerServer | None = None
    try:
        # SageMaker hands every hyperparameter over as a string; none given means the image's defaults.
        hps = {} if args.epochs is None else {"epochs": str(args.epochs)}
        jobs.make_job(base, data, hps, sagemaker_config=True, link=True)
        step(f"Training with {backend.description}")
        say(f"  /opt/ml is {base}; hyperparameters.json: {json.dumps(hps)}")
        backend.train(base)
        lap("training")

        server = backend.start_server(base)
        step(f"Serving the model on port {server.port}")
        say("$ " + backend.command_line(server))
        waited = server.wait_ready(PING_TIMEOUT_S)
        say(f"  /ping answered 200 after {waited:.1f} s")
        lap("server start")

        result = query(server.url(""), images, labels, base)
        lap("requests")
        print_metrics(base, result["accuracy"])
    finally:
        if server is not None:
            step("Stopping the server")
            say(f"  server stopped (exit {server.stop()})")
        if args.keep:
            say(f"  kept {base} (model, output, serve.log, the PNG sent)")
        else:
            shutil.rmtree(base, ignore_errors=True)
    step("Done")
    say("  " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings.items()))
    say(f"  demo wall-clock time: {time.monotonic() - started:.1f} s ({backend.description})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devkit.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-docker", action="store_true",
                        help="run container/train and container/serve from the project's virtualenv")
    parser.add_argument("--epochs", type=int, default=None,
                        help="training epochs (default: the image's default hyperparameters)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary /opt/ml folder")
    parser.add_argument("--image", default=DEFAULT_IMAGE,
                        help=f"image tag to build and run (default {DEFAULT_IMAGE})")
    args = parser.parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        parser.error("--epochs must be at least 1")
    started = time.monotonic()
    try:
        run(args)
    except (DemoError, mnist.MnistError, KitError) as e:
        say(f"\ndemo failed after {time.monotonic() - started:.1f} s: {e}")
        return 1
    except KeyboardInterrupt:
        say("\ndemo interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
