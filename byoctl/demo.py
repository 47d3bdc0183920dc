"""`make demo`: build the CPU image, train it on MNIST, serve the model and query it over HTTP.

    python -m byoctl.demo [--no-docker] [--epochs N] [--keep] [--image TAG]

With a Docker engine (started through scripts/ensure-docker.sh when none answers) it runs the image
as SageMaker does: `docker run -v TMP:/opt/ml IMAGE train`, then `docker run IMAGE serve` on the
model directory. Without one it runs the same `container/train` and `container/serve` from the
project's virtualenv with SAGEMAKER_BASE_DIR=TMP, and says so.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from byoctl import mnist

ROOT = Path(__file__).resolve().parents[1]
CONTAINER = ROOT / "container"
ENSURE_DOCKER = ROOT / "scripts" / "ensure-docker.sh"
# The Makefile exports CPU_IMAGE (its tag for `make image-cpu`), so `make demo CPU_IMAGE=...` agrees.
DEFAULT_IMAGE = os.environ.get("CPU_IMAGE") or "mxnet-byoc:cpu"
MNIST_CACHE = ROOT / ".cache" / "mnist"

# SageMaker channel -> the MNIST files copied into it.
CHANNELS = {
    "training": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
JSON_DIGITS = 8  # test digits sent in the JSON request
PNG_DIGIT = JSON_DIGITS  # the next one goes as a PNG
NPY_BATCH = 1000  # images per application/x-npy request (about 0.8 MB, far below SageMaker's 6 MB)
PING_TIMEOUT_S = 180.0

# The server listens on 127.0.0.1 only from our point of view: never send these requests to a proxy.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


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

    def start_server(self, base: Path, port: int, log: Path) -> subprocess.Popen:
        raise NotImplementedError

    def stop_server(self, proc: subprocess.Popen) -> None:
        raise NotImplementedError


class DockerBackend(Backend):
    def __init__(self, image: str):
        self.image = image
        self.name = f"mxnet-byoc-demo-{os.getpid()}"
        self.description = f"Docker (image {image})"
        # Files the container writes into the mounted folder should belong to the caller, so the
        # temp dir can be removed without root. As root (the usual case here) nothing changes.
        self.user = [] if os.getuid() == 0 else ["--user", f"{os.getuid()}:{os.getgid()}", "-e", "HOME=/tmp"]

    def prepare(self) -> None:
        # The Makefile owns the build command; make keeps the image current when the code changes.
        _run(["make", "-C", str(ROOT), "image-cpu", f"CPU_IMAGE={self.image}"], "building the CPU image")

    def train(self, base: Path) -> None:
        _run(["docker", "run", "--rm", "--network", "host", *self.user, "-v", f"{base}:/opt/ml",
              self.image, "train"], "training in the container")

    def start_server(self, base: Path, port: int, log: Path) -> subprocess.Popen:
        cmd = ["docker", "run", "--rm", "--name", self.name, "--network", "host", *self.user,
               "-e", f"SAGEMAKER_BIND_TO_PORT={port}", "-v", f"{base / 'model'}:/opt/ml/model:ro",
               self.image, "serve"]
        say("$ " + " ".join(cmd))
        with open(log, "wb") as out:
            return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)

    def stop_server(self, proc: subprocess.Popen) -> None:
        # `docker stop` sends SIGTERM (SageMaker's way to scale in) and waits; --rm removes the container.
        subprocess.run(["docker", "stop", "--time", "30", self.name],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_or_kill(proc)


class VenvBackend(Backend):
    def __init__(self) -> None:
        venv_python = ROOT / ".venv" / "bin" / "python"
        self.python = str(venv_python) if venv_python.exists() else sys.executable
        self.description = f"the project's virtualenv ({self.python})"

    def _env(self, base: Path, **extra: str) -> dict[str, str]:
        env = dict(os.environ, SAGEMAKER_BASE_DIR=str(base), **extra)
        # container/serve starts gunicorn by name: the venv's bin must come first, as in the image.
        env["PATH"] = str(Path(self.python).parent) + os.pathsep + env.get("PATH", "")
        return env

    def train(self, base: Path) -> None:
        _run([self.python, str(CONTAINER / "train")], "training in the virtualenv", env=self._env(base))

    def start_server(self, base: Path, port: int, log: Path) -> subprocess.Popen:
        cmd = [self.python, str(CONTAINER / "serve")]
        say(f"$ SAGEMAKER_BASE_DIR={base} SAGEMAKER_BIND_TO_PORT={port} {' '.join(cmd)}")
        with open(log, "wb") as out:
            # Its own session, so that stopping it reaches gunicorn's workers too.
            return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                    env=self._env(base, SAGEMAKER_BIND_TO_PORT=str(port)))

    def stop_server(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        _wait_or_kill(proc, group=True)


def _run(cmd: Sequence[str], what: str, env: dict[str, str] | None = None) -> None:
    say("$ " + " ".join(cmd))
    try:
        result = subprocess.run(list(cmd), env=env)
    except FileNotFoundError as e:
        raise DemoError(f"{what} failed: {cmd[0]} is not installed ({e})") from e
    if result.returncode != 0:
        raise DemoError(f"{what} failed (exit {result.returncode}): {' '.join(cmd)}")


def _wait_or_kill(proc: subprocess.Popen, group: bool = False) -> None:
    try:
        proc.wait(timeout=40)
    except subprocess.TimeoutExpired:
        if group:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
        proc.wait()


# --- data and the job's folder ----------------------------------------------------------------


def load_test_set(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """MNIST's 10,000 test digits (N, 28, 28) uint8 and labels, read by the image's own IDX reader."""
    from mxnet_byoc.train.data import read_idx

    images_name, labels_name = CHANNELS["test"]
    return read_idx(folder / images_name), read_idx(folder / labels_name)


def stage_job(base: Path, data: Path, epochs: int | None) -> None:
    """Lay out base as SageMaker lays out /opt/ml for a job with `training` and `test` channels."""
    config = base / "input" / "config"
    config.mkdir(parents=True)
    # SageMaker hands every hyperparameter over as a string; none given means the image's defaults.
    hps = {} if epochs is None else {"epochs": str(epochs)}
    (config / "hyperparameters.json").write_text(json.dumps(hps))
    channel_spec = {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated",
                    "RecordWrapperType": "None"}
    (config / "inputdataconfig.json").write_text(json.dumps({name: channel_spec for name in CHANNELS}))
    for channel, names in CHANNELS.items():
        folder = base / "input" / "data" / channel
        folder.mkdir(parents=True)
        for name in names:
            # Real files, not symlinks: a symlink would point outside the folder mounted into Docker.
            try:
                os.link(data / name, folder / name)
            except OSError:
                shutil.copyfile(data / name, folder / name)


# --- talking to the server --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_ping(url: str, proc: subprocess.Popen, log: Path) -> float:
    start = time.monotonic()
    while time.monotonic() - start < PING_TIMEOUT_S:
        if proc.poll() is not None:
            raise DemoError(f"the server exited with code {proc.returncode} before answering /ping:\n"
                            + _tail(log))
        try:
            with _HTTP.open(url + "/ping", timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - start
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.2)
    raise DemoError(f"/ping did not answer 200 within {PING_TIMEOUT_S:.0f} s:\n" + _tail(log))


def invoke(url: str, body: bytes, content_type: str) -> list[dict[str, Any]]:
    request = urllib.request.Request(url + "/invocations", data=body, method="POST",
                                     headers={"Content-Type": content_type, "Accept": "application/json"})
    try:
        with _HTTP.open(request, timeout=60) as response:
            payload = json.loads(response.read())
    except urllib.error.HTTPError as e:
        raise DemoError(f"POST /invocations ({content_type}) answered HTTP {e.code}: "
                        f"{e.read()[:500].decode(errors='replace')}") from e
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


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def npy_bytes(images: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, images, allow_pickle=False)
    return buffer.getvalue()


def query(url: str, images: np.ndarray, labels: np.ndarray, base: Path) -> dict[str, float]:
    step(f"JSON request: {JSON_DIGITS} test digits as 28x28 pixel lists (application/json)")
    body = json.dumps({"instances": images[:JSON_DIGITS].tolist()}).encode()
    predictions = invoke(url, body, "application/json")
    if len(predictions) != JSON_DIGITS:
        raise DemoError(f"sent {JSON_DIGITS} digits but got {len(predictions)} predictions")
    for i, (p, truth) in enumerate(zip(predictions, labels[:JSON_DIGITS], strict=True)):
        show(p, int(truth), f"test digit #{i}")

    step(f"PNG request: test digit #{PNG_DIGIT} as a 28x28 greyscale PNG (image/png)")
    png = png_bytes(images[PNG_DIGIT])
    (base / f"digit-{PNG_DIGIT}.png").write_bytes(png)
    say(ascii_digit(images[PNG_DIGIT]))
    (prediction,) = invoke(url, png, "image/png")
    show(prediction, int(labels[PNG_DIGIT]), f"digit-{PNG_DIGIT}.png")

    step(f"Test accuracy over HTTP: {len(images)} digits in batches of {NPY_BATCH} (application/x-npy)")
    start = time.monotonic()
    correct = 0
    for i in range(0, len(images), NPY_BATCH):
        chunk, truth = images[i:i + NPY_BATCH], labels[i:i + NPY_BATCH]
        batch = invoke(url, npy_bytes(chunk), "application/x-npy")
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


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return _indent("\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
    except OSError:
        return "  (no server log)"


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
    data = mnist.ensure(MNIST_CACHE, log=lambda m: say("  " + m))
    say(f"  using {data}" + (" (MNIST_DIR)" if os.environ.get(mnist.MNIST_DIR_ENV) else ""))
    images, labels = load_test_set(data)
    lap("data")

    base = Path(tempfile.mkdtemp(prefix="mxnet-byoc-demo-"))
    proc: subprocess.Popen | None = None
    try:
        stage_job(base, data, args.epochs)
        hps = (base / "input" / "config" / "hyperparameters.json").read_text()
        step(f"Training with {backend.description}")
        say(f"  /opt/ml is {base}; hyperparameters.json: {hps}")
        backend.train(base)
        lap("training")

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        step(f"Serving the model on port {port}")
        log = base / "serve.log"
        proc = backend.start_server(base, port, log)
        waited = wait_for_ping(url, proc, log)
        say(f"  /ping answered 200 after {waited:.1f} s")
        lap("server start")

        result = query(url, images, labels, base)
        lap("requests")
        print_metrics(base, result["accuracy"])
    finally:
        if proc is not None:
            step("Stopping the server")
            backend.stop_server(proc)
            say(f"  server stopped (exit {proc.returncode})")
        if args.keep:
            say(f"  kept {base} (model, output, serve.log, the PNG sent)")
        else:
            shutil.rmtree(base, ignore_errors=True)
    step("Done")
    say("  " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings.items()))
    say(f"  demo wall-clock time: {time.monotonic() - started:.1f} s ({backend.description})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m byoctl.demo", description=__doc__.split("\n\n")[0])
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
    except (DemoError, mnist.MnistError) as e:
        say(f"\ndemo failed after {time.monotonic() - started:.1f} s: {e}")
        return 1
    except KeyboardInterrupt:
        say("\ndemo interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
