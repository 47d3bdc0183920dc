"""The CPU image as SageMaker drives it: `train` on full MNIST with /opt/ml mounted, then `serve` on the
artifacts, real HTTP requests, and signals reaching our processes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import requests

from devkit.bodies import npy
from devkit.docker import container_name, docker_command, docker_run
from devkit.idx import mnist_arrays
from devkit.jobs import TrainedJob, make_job
from devkit.servers import ContainerServer, serving
from devkit.shell import sh
from devkit.waiting import wait_until

pytestmark = [pytest.mark.container, pytest.mark.slow]

BATCH = 1000  # 784 kB of uint8 per request, far below the 6 MB real-time limit


def test_train_writes_the_model_and_metrics(cpu_trained: TrainedJob) -> None:
    for name in ("model-symbol.json", "model-0000.params", "model-shapes.json", "metadata.json"):
        assert (cpu_trained.model_dir / name).is_file(), name
    assert not (cpu_trained.base / "output" / "failure").exists()
    # Two epochs of the CNN on full MNIST: well above 98% (99% is typical).
    assert cpu_trained.metrics["validation_accuracy"] > 0.98, cpu_trained.metrics
    assert "validation_accuracy=" in cpu_trained.run.log  # metric lines reach `docker logs` unbuffered


def test_accuracy_over_http_matches_the_training_metrics(cpu_image: str, cpu_trained: TrainedJob,
                                                         mnist_dir: Path) -> None:
    images, labels = mnist_arrays(mnist_dir, "test")
    predicted: list[int] = []
    with serving(cpu_image, cpu_trained.model_dir) as server:
        session = requests.Session()
        for start in range(0, len(images), BATCH):
            r = session.post(server.url("/invocations"), data=npy(images[start:start + BATCH]),
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
    images, labels = mnist_arrays(mnist_dir, "test", 1)
    image, label = images[0], int(labels[0])
    with serving(cpu_image, cpu_trained.model_dir) as server:
        r = requests.post(server.url("/invocations"), json={"instances": [image.tolist()]}, timeout=30)
        assert r.status_code == 200, r.text[:500]
        assert int(r.json()["predictions"][0]["label"]) == label
        # No shell or init in between: PID 1 is the `serve` program itself (it runs nginx and gunicorn).
        cmdline = sh("docker", "exec", server.name, "cat", "/proc/1/cmdline").stdout.split("\0")
        assert any(part.endswith("/serve") or part == "serve" for part in cmdline), cmdline
        assert not any(part.endswith(("/sh", "/bash", "/tini")) for part in cmdline[:1]), cmdline


SERVE_PROCESSES_MAPPING = """
import glob
for folder in glob.glob("/proc/[0-9]*"):
    try:
        cmdline = open(folder + "/cmdline", "rb").read().split(b"\\0")
        maps = open(folder + "/maps").read()
    except OSError:
        continue
    if any(part.endswith(b"/serve") for part in cmdline):
        print(folder[6:], "libjemalloc.so" in maps)
"""


def _serve_processes_with_jemalloc(container: str) -> dict[str, bool]:
    out = sh("docker", "exec", container, "python3", "-c", SERVE_PROCESSES_MAPPING).stdout
    return {pid: mapped == "True" for pid, mapped in (line.split() for line in out.splitlines())}


def test_serve_runs_its_master_and_workers_on_jemalloc(cpu_image: str, cpu_trained: TrainedJob) -> None:
    # The image ships jemalloc and `serve` preloads it (mxnet_byoc/serve/allocator.py; `bench/serve_bench.py
    # --mode allocator` measures it).
    two_workers = {"SAGEMAKER_MODEL_SERVER_WORKERS": "2"}
    with serving(cpu_image, cpu_trained.model_dir, env=two_workers) as server:
        found = _serve_processes_with_jemalloc(server.name)
    assert len(found) == 4 and all(found.values()), found  # serve, gunicorn's master and its 2 workers
    with serving(cpu_image, cpu_trained.model_dir, env={**two_workers, "LD_PRELOAD": ""}) as server:  # opt-out
        found = _serve_processes_with_jemalloc(server.name)
    assert len(found) == 4 and not any(found.values()), found


def test_docker_stop_ends_serve_cleanly(cpu_image: str, cpu_trained: TrainedJob) -> None:
    server = ContainerServer(cpu_image, cpu_trained.model_dir)
    try:
        server.wait_ready()
        code = server.stop(timeout=30)
    finally:
        server.remove()
    # SIGTERM reached serve, which stopped nginx, then gunicorn, and exited 0; SIGKILL after the
    # 30 s grace period would show as 137.
    assert code == 0


def test_serve_runs_as_a_non_root_user(cpu_image: str, cpu_trained: TrainedJob, mnist_dir: Path) -> None:
    # SageMaker runs containers as root; the image must not depend on it.
    image, _ = mnist_arrays(mnist_dir, "test", 5)
    with serving(cpu_image, cpu_trained.model_dir, user="65534:65534") as server:
        r = requests.post(server.url("/invocations"), data=npy(image),
                          headers={"Content-Type": "application/x-npy"}, timeout=30)
        assert r.status_code == 200, r.text[:500]
        assert len(r.json()["predictions"]) == 5
        assert sh("docker", "exec", server.name, "id", "-u").stdout.strip() == "65534"


def test_docker_stop_reaches_train(cpu_image: str, mnist_dir: Path, tmp_path: Path) -> None:
    """StopTrainingJob is SIGTERM then SIGKILL: train must stop by itself, with a reason, before the kill."""
    base = make_job(tmp_path / "opt-ml", mnist_dir, {"model": "cnn", "epochs": "50", "log_interval": "20"},
                    sagemaker_config=True)
    name = container_name("train")
    sh(*docker_command(cpu_image, name=name, detach=True, mounts={base: "/opt/ml"}))
    try:
        wait_until(lambda: "step" in sh("docker", "logs", name).stdout.lower(), 300, "training to begin",
                   details=lambda: sh("docker", "logs", name).stdout[-3000:], interval=1)
        sh("docker", "stop", "--time", "60", name, timeout=120)
        code = int(sh("docker", "inspect", "--format", "{{.State.ExitCode}}", name).stdout)
        logs = sh("docker", "logs", name)
    finally:
        sh("docker", "rm", "-f", name, check=False)
    # The job's own "stopped" code, before the SIGKILL that `docker stop` sends after 60 s (137).
    assert code == 143, logs.stdout[-3000:] + logs.stderr[-3000:]
    failure = (base / "output" / "failure").read_text()
    assert "stopped" in failure.lower(), failure


def test_no_command_means_train(cpu_image: str, mnist_dir: Path, tmp_path: Path) -> None:
    """SDK 3.x local mode starts the image with no command: CMD makes that a training job."""
    base = make_job(tmp_path / "opt-ml", mnist_dir, {"model": "mlp", "epochs": "1"}, sagemaker_config=True)
    run = docker_run(cpu_image, mounts={base: "/opt/ml"})
    assert run.returncode == 0, run.log[-3000:]
    assert (base / "model" / "model-symbol.json").is_file()
