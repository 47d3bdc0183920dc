"""The CPU image as SageMaker drives it: `train` on full MNIST with /opt/ml mounted, then `serve` on the
artifacts, real HTTP requests, and signals reaching our processes."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from dockerkit import (
    MNIST_FILES,
    Server,
    TrainedJob,
    docker_run,
    make_job,
    read_idx_gz,
    serving,
    sh,
)

pytestmark = [pytest.mark.container, pytest.mark.slow]

BATCH = 1000  # 784 kB of uint8 per request, far below the 6 MB real-time limit


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def test_train_writes_the_model_and_metrics(cpu_trained: TrainedJob) -> None:
    for name in ("model-symbol.json", "model-0000.params", "model-shapes.json", "metadata.json"):
        assert (cpu_trained.model_dir / name).is_file(), name
    assert not (cpu_trained.base / "output" / "failure").exists()
    # Two epochs of the CNN on full MNIST: well above 98% (99% is typical).
    assert cpu_trained.metrics["validation_accuracy"] > 0.98, cpu_trained.metrics
    assert "validation_accuracy=" in cpu_trained.run.log  # metric lines reach `docker logs` unbuffered


def test_accuracy_over_http_matches_the_training_metrics(cpu_image: str, cpu_trained: TrainedJob,
                                                         mnist_dir: Path) -> None:
    images = read_idx_gz(mnist_dir / MNIST_FILES["test"][0])
    labels = read_idx_gz(mnist_dir / MNIST_FILES["test"][1])
    predicted: list[int] = []
    with serving(cpu_image, cpu_trained.model_dir) as server:
        session = requests.Session()
        for start in range(0, len(images), BATCH):
            r = session.post(f"{server.url}/invocations", data=npy(images[start:start + BATCH]),
                             headers={"Content-Type": "application/x-npy", "Accept": "application/json"},
                             timeout=60)
            assert r.status_code == 200, r.text[:500]
            predicted += [int(p["label"]) for p in r.json()["predictions"]]
    assert len(predicted) == len(labels) == 10000
    http_accuracy = float(np.mean(np.array(predicted) == labels))
    trained = cpu_trained.metrics["validation_accuracy"]
    print(f"accuracy over HTTP {http_accuracy:.4f}, written by train {trained:.4f}")
    # The same network on the same pixels: at most a couple of borderline images may differ (batched
    # floating-point sums); 0.0003 is 3 images of 10,000.
    assert abs(http_accuracy - trained) <= 0.0003


def test_serve_answers_json_and_is_pid_1(cpu_image: str, cpu_trained: TrainedJob, mnist_dir: Path) -> None:
    image = read_idx_gz(mnist_dir / MNIST_FILES["test"][0])[0]
    label = int(read_idx_gz(mnist_dir / MNIST_FILES["test"][1])[0])
    with serving(cpu_image, cpu_trained.model_dir) as server:
        r = requests.post(f"{server.url}/invocations", json={"instances": [image.tolist()]}, timeout=30)
        assert r.status_code == 200, r.text[:500]
        assert int(r.json()["predictions"][0]["label"]) == label
        # No shell or init in between: PID 1 is the `serve` program itself (gunicorn's master).
        cmdline = sh("docker", "exec", server.name, "cat", "/proc/1/cmdline").stdout.split("\0")
        assert any(part.endswith("/serve") or part == "serve" for part in cmdline), cmdline
        assert not any(part.endswith(("/sh", "/bash", "/tini")) for part in cmdline[:1]), cmdline


def test_docker_stop_ends_serve_quickly_and_cleanly(cpu_image: str, cpu_trained: TrainedJob) -> None:
    server = Server(cpu_image, cpu_trained.model_dir)
    try:
        server.wait_ready()
        started = time.monotonic()
        sh("docker", "stop", "--time", "30", server.name, timeout=60)
        seconds = time.monotonic() - started
        state = server.state()
    finally:
        server.remove()
    print(f"docker stop of serve: {seconds:.1f} s, exit code {state['ExitCode']}")
    # SIGTERM reached gunicorn's master, which stopped its workers and exited 0; SIGKILL after the
    # 30 s grace period would show as 137.
    assert state["ExitCode"] == 0, state
    assert seconds < 15


def test_serve_runs_as_a_non_root_user(cpu_image: str, cpu_trained: TrainedJob, mnist_dir: Path) -> None:
    # SageMaker runs containers as root; the image must not depend on it (issue 7).
    image = read_idx_gz(mnist_dir / MNIST_FILES["test"][0])[:5]
    with serving(cpu_image, cpu_trained.model_dir, user="65534:65534") as server:
        r = requests.post(f"{server.url}/invocations", data=npy(image),
                          headers={"Content-Type": "application/x-npy"}, timeout=30)
        assert r.status_code == 200, r.text[:500]
        assert len(r.json()["predictions"]) == 5
        assert sh("docker", "exec", server.name, "id", "-u").stdout.strip() == "65534"


def test_docker_stop_reaches_train(cpu_image: str, mnist_dir: Path, tmp_path: Path) -> None:
    """StopTrainingJob is SIGTERM then SIGKILL: train must stop by itself, with a reason, before the kill."""
    base = make_job(tmp_path / "opt-ml", mnist_dir, {"model": "cnn", "epochs": "50", "log_interval": "20"})
    name = f"mxnet-byoc-train-{base.name}-{int(time.time())}"
    sh("docker", "run", "-d", "--name", name, "--network", "host", "-v", f"{base}:/opt/ml", cpu_image)
    try:
        deadline = time.monotonic() + 300
        while "step" not in sh("docker", "logs", name).stdout.lower():  # training has begun
            assert time.monotonic() < deadline, sh("docker", "logs", name).stdout[-3000:]
            time.sleep(1)
        started = time.monotonic()
        sh("docker", "stop", "--time", "60", name, timeout=120)
        seconds = time.monotonic() - started
        code = int(sh("docker", "inspect", "--format", "{{.State.ExitCode}}", name).stdout)
        logs = sh("docker", "logs", name)
    finally:
        sh("docker", "rm", "-f", name, check=False)
    print(f"docker stop of train: {seconds:.1f} s, exit code {code}")
    assert code == 143, logs.stdout[-3000:] + logs.stderr[-3000:]  # the job's own "stopped" code, not 137
    assert seconds < 30
    failure = (base / "output" / "failure").read_text()
    assert "stopped" in failure.lower(), failure


def test_no_command_means_train(cpu_image: str, mnist_dir: Path, tmp_path: Path) -> None:
    """SDK 3.x local mode starts the image with no command: CMD makes that a training job."""
    base = make_job(tmp_path / "opt-ml", mnist_dir, {"model": "mlp", "epochs": "1"})
    run = docker_run(cpu_image, mounts={base: "/opt/ml"})
    assert run.returncode == 0, run.log[-3000:]
    assert (base / "model" / "model-symbol.json").is_file()
