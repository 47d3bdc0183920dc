"""Two hosts through the SageMaker Python SDK's local mode: `instance_count=2`, real containers.

Local mode starts one container per host on the `sagemaker-local` bridge (hosts `algo-1-xxxxx`,
`algo-2-xxxxx`) under `docker-compose up --abort-on-container-exit`: the image itself must find its peers,
start the parameter servers, train with `dist_sync`, and keep every host alive until the first host has
written the model into the folder they all share. The same hyperparameters then train on one host, and
the two models must reach the same test accuracy (within 0.3 points).

Offline as test_local_mode.py is (its fixtures and session helper are reused): dummy credentials, no
telemetry, a proxy that leads nowhere.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from devkit.net import free_port
from devkit.project import LOGS
from tests.container import test_local_mode as one_host_tests
from tests.container.test_local_mode import ROLE, _local_mode_containers, local_session

# The single-host local-mode tests' module fixtures, shared by name: offline SDK environment, file://
# channels with full MNIST, the test set, and removal of what local mode leaves behind.
offline = one_host_tests.offline
channels = one_host_tests.channels
test_set = one_host_tests.test_set
compose_containers = one_host_tests.compose_containers

pytestmark = [pytest.mark.container, pytest.mark.slow]

# The single-host local-mode test's configuration: one epoch of the CNN, about 98.5-99%. batch_size
# and learning_rate are global (summed over hosts), so both runs take the same number of steps.
HYPERPARAMETERS = one_host_tests.HYPERPARAMETERS
FIT_TIMEOUT_S = 900  # two hosts on 2 shared cores take a few minutes at most; a hang is far longer
MAX_ACCURACY_GAP = 0.003  # 0.3 points
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # docker-compose colours the name that prefixes each line


@dataclass
class Fit:
    hosts: int
    log: str
    seconds: float
    model_tar: Path
    output_tar: Path
    containers: dict[str, dict]  # compose service (host name) -> `docker inspect` State
    container_logs: dict[str, str]  # compose service -> `docker logs`, complete even after compose aborted

    def extract(self, destination: Path) -> Path:
        destination.mkdir(parents=True, exist_ok=True)
        with tarfile.open(self.model_tar) as tar:
            tar.extractall(destination, filter="data")
        return destination

    @property
    def metadata(self) -> dict:
        with tarfile.open(self.model_tar) as tar:
            return json.load(tar.extractfile("metadata.json"))

    @property
    def metrics(self) -> dict:
        with tarfile.open(self.output_tar) as tar:
            return json.load(tar.extractfile("data/metrics.json"))  # output/data/ of the first host

    def host_lines(self, host: str) -> list[str]:
        return host_lines(self.log, host)


def host_lines(log: str, host: str) -> list[str]:
    """What the container of `host` printed (compose prefixes each line with the container's name)."""
    prefix = re.compile(rf"^\S*{re.escape(host)}\s+\|\s?(.*)$")
    return [m.group(1).rstrip("\r") for line in ANSI.sub("", log).splitlines() if (m := prefix.match(line))]


class _Tee(io.TextIOBase):
    """sys.stdout for the SDK: local mode writes the containers' output there; keep it and pass it on."""

    def __init__(self, passthrough):
        self.passthrough, self.buffer_ = passthrough, io.StringIO()
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            self.buffer_.write(text)
        return self.passthrough.write(text)

    def flush(self) -> None:
        self.passthrough.flush()

    def getvalue(self) -> str:
        with self._lock:
            return self.buffer_.getvalue()


@dataclass
class Run:
    """What a local-mode fit left: the SDK's output, its duration, and every container it started."""

    log: str
    seconds: float
    containers: dict[str, dict]  # compose service (host name) -> `docker inspect` State
    container_logs: dict[str, str]  # compose service -> `docker logs`, complete even after compose aborted


def _job_containers(image: str) -> set[str]:
    """Local-mode containers of `image`: other sessions may run local mode on the same engine meanwhile."""
    listed = subprocess.run(["docker", "ps", "-aq", "--no-trunc", "--filter", "label=com.docker.compose.project",
                             "--filter", f"ancestor={image}"], capture_output=True, text=True, check=True)
    return set(listed.stdout.split())


def run_fit(estimator, inputs: dict[str, str], job_name: str, timeout: float = FIT_TIMEOUT_S) -> Run:
    """`estimator.fit(inputs)` in local mode, bounded: on a timeout the job's containers are killed and the
    test fails. The SDK's output (the containers' logs) is kept in build/test-logs/<job_name>.log."""
    before = _job_containers(estimator.image_uri)
    outcome: dict[str, BaseException] = {}

    def run() -> None:
        try:
            estimator.fit(inputs, job_name=job_name)
        except BaseException as e:  # noqa: BLE001 - reported by the test's thread
            outcome["error"] = e

    tee = _Tee(sys.stdout)
    started = time.monotonic()
    with contextlib.redirect_stdout(tee):
        worker = threading.Thread(target=run, name=f"fit-{job_name}", daemon=True)
        worker.start()
        worker.join(timeout)
        seconds = time.monotonic() - started
        hung = worker.is_alive()
        new = sorted(_job_containers(estimator.image_uri) - before)
        if hung:
            # Killing the containers ends `docker-compose up`, and with it the SDK's fit.
            subprocess.run(["docker", "rm", "-f", *new], capture_output=True)
            worker.join(60)
    log = tee.getvalue()
    LOGS.mkdir(parents=True, exist_ok=True)
    (LOGS / f"{job_name}.log").write_text(log)
    print(f"local-mode fit {job_name}: {seconds:.1f} s (log: {LOGS / f'{job_name}.log'})")
    if hung:
        pytest.fail(f"{job_name} did not end by itself within {timeout} s:\n{log[-4000:]}")
    if "error" in outcome:
        pytest.fail(f"{job_name} failed: {outcome['error']!r}\n{log[-6000:]}")
    containers, container_logs = {}, {}
    for cid in new:
        inspect = json.loads(subprocess.run(["docker", "inspect", cid], capture_output=True, text=True,
                                            check=True).stdout)[0]
        service = inspect["Config"]["Labels"]["com.docker.compose.service"]
        containers[service] = inspect["State"]
        logs = subprocess.run(["docker", "logs", cid], capture_output=True, text=True, check=True)
        container_logs[service] = logs.stdout + logs.stderr
    return Run(log, seconds, containers, container_logs)


def _fit(hosts: int, cpu_image: str, channels: dict[str, Path], output: Path) -> Fit:
    from sagemaker.estimator import Estimator

    from byoctl.shared import metric_definitions

    estimator = Estimator(
        image_uri=cpu_image,
        role=ROLE,
        instance_count=hosts,
        instance_type="local",
        hyperparameters=HYPERPARAMETERS,
        output_path=f"file://{output}",
        metric_definitions=metric_definitions(),
        sagemaker_session=local_session(free_port()),
    )
    run = run_fit(estimator, {name: f"file://{path}" for name, path in channels.items()},
                  f"local-mode-{hosts}-hosts")
    return Fit(hosts, run.log, run.seconds, output / "model.tar.gz", output / "output.tar.gz", run.containers,
               run.container_logs)


@pytest.fixture(scope="module")
def one_host(offline, cpu_image, channels, compose_containers, tmp_path_factory) -> Fit:
    return _fit(1, cpu_image, channels, tmp_path_factory.mktemp("one-host-output"))


@pytest.fixture(scope="module")
def two_hosts(offline, cpu_image, channels, compose_containers, tmp_path_factory) -> Fit:
    return _fit(2, cpu_image, channels, tmp_path_factory.mktemp("two-hosts-output"))


def _accuracy_with_mxnet(model_dir: Path, images: np.ndarray, labels: np.ndarray) -> float:
    """The test accuracy recomputed outside the image, with plain MXNet on the exported files."""
    import mxnet as mx

    net = mx.gluon.SymbolBlock.imports(str(model_dir / "model-symbol.json"), ["data"],
                                       str(model_dir / "model-0000.params"))
    x = images.reshape(len(images), 1, 28, 28).astype(np.float32) / 255  # the layout metadata.json documents
    predicted = np.concatenate([net(mx.nd.array(x[i:i + 1000])).asnumpy().argmax(axis=1)
                                for i in range(0, len(x), 1000)])
    return float((predicted == labels).mean())


def test_both_hosts_join_one_cluster_and_train(two_hosts):
    services = sorted(two_hosts.containers)
    assert len(services) == 2 and re.fullmatch(r"algo-1-[a-z0-9]+", services[0]) \
        and re.fullmatch(r"algo-2-[a-z0-9]+", services[1]), services
    joined = {}
    for host in services:
        lines = two_hosts.host_lines(host)
        said = [line for line in lines if line.startswith("joined cluster:")]
        assert len(said) == 1, f"{host} printed no (or several) 'joined cluster' lines:\n" + "\n".join(lines[-40:])
        joined[host] = re.match(rf"joined cluster: kvstore=dist_sync rank=(\d) workers=2 servers=2 host={host} "
                                rf"hosts={services[0]},{services[1]} scheduler=(\S+)$", said[0])
        assert joined[host], said[0]
        # Each worker trained on its own half of the 60,000 training images.
        assert any("training cnn on 30000 images" in line for line in lines), "\n".join(lines[-40:])
        epochs = [line for line in lines if re.fullmatch(rf"epoch=1; .*; host={re.escape(host)};", line)]
        assert len(epochs) == 1, f"{host}: epoch lines {epochs}\n" + "\n".join(lines[-40:])
        assert float(re.search(r"validation_accuracy=([0-9.]+);", epochs[0]).group(1)) > 0.97, epochs[0]
    # One cluster: the same scheduler, and two distinct worker ranks. ps-lite numbers the workers by their
    # addresses, not by the host list, so algo-1 is not always rank 0 (only the first host writes the model).
    assert len({m.group(2) for m in joined.values()}) == 1, joined
    assert sorted(m.group(1) for m in joined.values()) == ["0", "1"], joined


def test_two_hosts_reach_the_accuracy_of_one(one_host, two_hosts, test_set, tmp_path):
    images, labels = test_set
    recorded = {}
    for fit in (one_host, two_hosts):
        metadata, metrics = fit.metadata, fit.metrics
        assert metadata["training"]["hosts"] == sorted(fit.containers), metadata["training"]
        assert metrics["test_accuracy"] == metadata["metrics"]["test_accuracy"]
        recomputed = _accuracy_with_mxnet(fit.extract(tmp_path / f"{fit.hosts}-hosts"), images, labels)
        # The model that was written is the one that was measured.
        assert abs(recomputed - metrics["test_accuracy"]) < 1e-4, (recomputed, metrics)
        recorded[fit.hosts] = recomputed
    print(f"test accuracy: one host {recorded[1]:.4f} ({one_host.seconds:.0f} s), "
          f"two hosts {recorded[2]:.4f} ({two_hosts.seconds:.0f} s)")
    assert recorded[1] > 0.97
    assert abs(recorded[2] - recorded[1]) <= MAX_ACCURACY_GAP, recorded


def test_the_job_ends_by_itself_and_leaves_no_container_running(two_hosts):
    # Every host exited on its own with 0: none was stopped by compose (--abort-on-container-exit), and
    # the first host's model was complete before any host left (the final barrier).
    for host, state in two_hosts.containers.items():
        assert state["Status"] == "exited" and state["ExitCode"] == 0 and not state["OOMKilled"], (host, state)
    for host, log in two_hosts.container_logs.items():
        assert "SIGTERM received" not in log and "ERROR" not in log, (host, log[-3000:])
    assert not _local_mode_containers(running=True)
