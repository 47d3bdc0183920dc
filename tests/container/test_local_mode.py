"""The SageMaker Python SDK's local mode drives the real image: fit, deploy + predict, batch transform.

A generic `Estimator(image_uri=..., instance_type="local")` trains on file:// channels, a local endpoint
answers `predict`, and a local batch transform of the whole test set (CSV, SplitType=Line) reaches the
test accuracy that training recorded. Then byoctl's `--local` path runs the same steps from the command
line. Fully offline: dummy credentials and region, no instance metadata, the SDK's telemetry opted out,
and a proxy that leads nowhere, so that any AWS call fails rather than leaves the machine.
Docker Compose is Debian's docker-compose 1.29.2 (the SDK falls back to it when `docker compose`
is no v2).
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from devkit.docker import CPU_IMAGE
from devkit.idx import MNIST_FILES, mnist_arrays, write_subsets
from devkit.net import free_port
from devkit.offline import AWS_OFFLINE, offline_aws
from devkit.project import ROOT
from devkit.shell import sh
from devkit.waiting import wait_until

pytestmark = [pytest.mark.container, pytest.mark.slow]

TELEMETRY_OPT_OUT = {"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}}
ROLE = "arn:aws:iam::111111111111:role/local-mode"  # never assumed in local mode
HYPERPARAMETERS = {"model": "cnn", "epochs": 1, "seed": 7}  # one epoch of the CNN: about 98.5-99%
PREDICT_IMAGES = 200


@pytest.fixture(scope="module")
def offline():
    with offline_aws():
        yield


@pytest.fixture(scope="module")
def compose_containers():
    """Removes what local mode leaves behind (exited containers, compose folders), as byoctl does."""
    from byoctl.leftovers import local_leftovers_removed

    before = set(_local_mode_containers(running=True))
    with local_leftovers_removed():
        yield
    running = [c for c in _local_mode_containers(running=True) if c not in before]
    assert not running, f"local mode left containers running: {running}"


def _local_mode_containers(running: bool = False) -> list[str]:
    """Local mode's containers of this checkout's image (CPU_IMAGE): other checkouts sharing the Docker
    engine use tags of their own, and their containers come and go while these tests run."""
    from byoctl.leftovers import local_mode_containers

    ours = set(sh("docker", "ps", "-a", "-q", "--no-trunc", "--filter", f"ancestor={CPU_IMAGE}").stdout.split())
    return [cid for cid, (state, _) in local_mode_containers().items()
            if cid in ours and (state == "running" or not running)]


def local_session(port: int):
    from sagemaker.local import LocalSession

    session = LocalSession(sagemaker_config=TELEMETRY_OPT_OUT)
    session.config = {"local": {"local_code": True, "serving_port": port}}
    return session


@pytest.fixture(scope="module")
def channels(mnist_dir, tmp_path_factory) -> dict[str, Path]:
    """file:// channels (local mode bind-mounts the folders, so the files are copied, not linked)."""
    base = tmp_path_factory.mktemp("channels")
    result = {}
    for name, files in MNIST_FILES.items():
        (base / name).mkdir()
        for file in files:
            (base / name / file).write_bytes((mnist_dir / file).read_bytes())
        result[name] = base / name
    return result


@pytest.fixture(scope="module")
def test_set(mnist_dir) -> tuple[np.ndarray, np.ndarray]:
    return mnist_arrays(mnist_dir, "test")


@pytest.fixture(scope="module")
def fitted(offline, cpu_image, channels, compose_containers, tmp_path_factory):
    """A generic Estimator trained in local mode; its model.tar.gz and recorded test accuracy."""
    from sagemaker.estimator import Estimator

    from byoctl.shared import metric_definitions

    output = tmp_path_factory.mktemp("estimator-output")
    estimator = Estimator(
        image_uri=cpu_image,
        role=ROLE,
        instance_count=1,
        instance_type="local",
        hyperparameters=HYPERPARAMETERS,
        output_path=f"file://{output}",
        metric_definitions=metric_definitions(),
        sagemaker_session=local_session(free_port()),
    )
    started = time.monotonic()
    estimator.fit({name: f"file://{path}" for name, path in channels.items()}, job_name="local-mode-fit")
    print(f"local-mode fit: {time.monotonic() - started:.1f} s")
    model_tar = output / "model.tar.gz"
    assert estimator.model_data == f"file://{model_tar}"
    with tarfile.open(model_tar) as tar:
        names = set(tar.getnames())
        assert {"model-symbol.json", "model-0000.params", "model-shapes.json", "metadata.json"} <= names
        metadata = json.load(tar.extractfile("metadata.json"))
    accuracy = metadata["metrics"]["test_accuracy"]
    assert accuracy > 0.97, metadata["metrics"]
    return model_tar, accuracy


def test_estimator_fit_writes_the_model_at_the_output_path(fitted):
    model_tar, accuracy = fitted
    assert model_tar.stat().st_size > 10_000
    assert accuracy > 0.97


def test_deploy_to_a_local_endpoint_and_predict(offline, cpu_image, fitted, test_set):
    from sagemaker.deserializers import JSONDeserializer
    from sagemaker.model import Model
    from sagemaker.serializers import IdentitySerializer, JSONSerializer

    model_tar, _ = fitted
    images, labels = test_set
    port = free_port()
    model = Model(image_uri=cpu_image, model_data=f"file://{model_tar}", role=ROLE,
                  sagemaker_session=local_session(port))
    # wait=False: the local endpoint already waits for /ping, and SDK's own wait sleeps 30 s first.
    predictor = model.deploy(initial_instance_count=1, instance_type="local", endpoint_name="local-mode-endpoint",
                             serializer=JSONSerializer(), deserializer=JSONDeserializer(), wait=False)
    try:
        if predictor is None:  # wait=False returns no predictor in some 2.x versions
            from sagemaker.predictor import Predictor

            predictor = Predictor("local-mode-endpoint", sagemaker_session=model.sagemaker_session,
                                  serializer=JSONSerializer(), deserializer=JSONDeserializer())
        answer = predictor.predict({"instances": images[:PREDICT_IMAGES].tolist()})
        predicted = np.array([int(p["label"]) for p in answer["predictions"]])
        assert predicted.shape == (PREDICT_IMAGES,)
        assert (predicted == labels[:PREDICT_IMAGES]).mean() > 0.97
        probabilities = np.array(answer["predictions"][0]["probabilities"])
        assert probabilities.shape == (10,) and abs(probabilities.sum() - 1) < 1e-3

        # A PNG through the same endpoint.
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(images[0]).save(buffer, format="PNG")
        predictor.serializer = IdentitySerializer(content_type="image/png")
        png = predictor.predict(buffer.getvalue())
        assert int(png["predictions"][0]["label"]) == int(predicted[0])
    finally:
        # The model first: delete_model looks it up through the endpoint config, which goes with the endpoint.
        predictor.delete_model()
        predictor.delete_endpoint()
    assert not _local_mode_containers(running=True)


def test_local_batch_transform_reaches_the_training_accuracy(offline, cpu_image, fitted, test_set, tmp_path):
    from sagemaker.model import Model

    model_tar, trained_accuracy = fitted
    images, labels = test_set
    data = tmp_path / "input"
    data.mkdir()
    # One image per line, 784 pixel values 0-255: what SplitType=Line hands the server as text/csv.
    np.savetxt(data / "test.csv", images.reshape(len(images), -1), fmt="%d", delimiter=",")
    output = tmp_path / "output"
    model = Model(image_uri=cpu_image, model_data=f"file://{model_tar}", role=ROLE,
                  sagemaker_session=local_session(free_port()), name="local-mode-transform-model")
    transformer = model.transformer(instance_count=1, instance_type="local", strategy="MultiRecord",
                                    assemble_with="Line", output_path=f"file://{output}", accept="text/csv",
                                    max_payload=6)
    started = time.monotonic()
    try:
        transformer.transform(f"file://{data / 'test.csv'}", content_type="text/csv", split_type="Line",
                              job_name="local-mode-transform", wait=True, logs=False)
    finally:
        model.delete_model()
    print(f"local batch transform of {len(images)} images: {time.monotonic() - started:.1f} s")
    predicted = np.array([int(float(line)) for line in (output / "test.csv.out").read_text().split()])
    assert predicted.shape == labels.shape
    accuracy = float((predicted == labels).mean())
    print(f"transform accuracy {accuracy:.4f}, training recorded {trained_accuracy:.4f}")
    assert abs(accuracy - trained_accuracy) <= 0.002
    assert not _local_mode_containers(running=True)


# --- byoctl --local, end to end -----------------------------------------------------------------


def _byoctl(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, **AWS_OFFLINE, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "byoctl", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


def test_byoctl_local_train_deploy_invoke_transform_delete(offline, cpu_image, fitted, test_set, mnist_dir,
                                                           compose_containers, tmp_path):
    byoctl_local_round_trip(cpu_image, test_set, mnist_dir, tmp_path, deploy_model=fitted[0])


def byoctl_local_round_trip(cpu_image: str, test_set: tuple[np.ndarray, np.ndarray], mnist_dir: Path, tmp_path: Path,
                            deploy_model: Path | None = None, train_records: int = 3000,
                            hyperparameters: tuple[str, ...] = ("epochs=1", "model=mlp"),
                            min_accuracy: tuple[float, float] = (0.95, 0.97)) -> None:
    """byoctl --local from the command line, under the SDK installed with this Python (tests/container/sdk3
    runs it under SDK 3): train, deploy, invoke, delete, transform. The endpoint and the transform use
    `deploy_model`, else the model trained here; `min_accuracy` is for the invocation and the transform."""
    images, labels = test_set
    # 1. train --local on a small subset: it completes, writes model.tar.gz and shows the metric lines.
    write_subsets(mnist_dir, tmp_path / "data", train_records, 1000)
    output = tmp_path / "byoctl-output"
    hps = [arg for hp in hyperparameters for arg in ("--hp", hp)]
    result = _byoctl("train", "--local", "--image", cpu_image, "--output-path", f"file://{output}",
                     "--channel", f"training=file://{tmp_path / 'data' / 'training'}",
                     "--channel", f"test=file://{tmp_path / 'data' / 'test'}",
                     *hps, "--job-name", "byoctl-local-train")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (output / "model.tar.gz").is_file()
    final = re.search(r"\[byoctl-local-train\] final metrics: .*test_accuracy=([0-9.]+)", result.stdout)
    assert final, result.stdout[-3000:]
    assert float(final.group(1)) > 0.7
    assert f"[byoctl-local-train] model artifacts: file://{output}/model.tar.gz" in result.stdout

    # 2. deploy --local: serves in the foreground until delete --local.
    model_tar = deploy_model or output / "model.tar.gz"
    port = free_port()
    env = {**os.environ, **AWS_OFFLINE, "PYTHONUNBUFFERED": "1"}
    log_path = tmp_path / "deploy.log"
    with open(log_path, "w") as log:
        deploy = subprocess.Popen(
            [sys.executable, "-m", "byoctl", "deploy", "--local", "--image", cpu_image,
             "--model-data", f"file://{model_tar}", "--endpoint-name", "byoctl-local", "--serving-port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    try:
        wait_until(lambda: "is serving on" in log_path.read_text(), 300, "deploy --local serving",
                   process=deploy, details=log_path.read_text, interval=1)

        # 3. invoke --local with a PNG and an .npy batch.
        from PIL import Image

        Image.fromarray(images[3]).save(tmp_path / "digit.png")
        result = _byoctl("invoke", "--local", "--serving-port", str(port), "byoctl-local", str(tmp_path / "digit.png"))
        assert result.returncode == 0, result.stderr
        assert int(json.loads(result.stdout)["predictions"][0]["label"]) == int(labels[3])
        np.save(tmp_path / "batch.npy", images[:100].astype(np.float32) / 255)
        result = _byoctl("invoke", "--local", "--serving-port", str(port), "byoctl-local", str(tmp_path / "batch.npy"),
                         "--accept", "text/csv")
        assert result.returncode == 0, result.stderr
        predicted = np.array([int(line) for line in result.stdout.split()])
        assert (predicted == labels[:100]).mean() > min_accuracy[0]

        # A client mistake comes back as the server's 4xx message, not a traceback.
        (tmp_path / "bad.json").write_text('{"nope": []}')
        result = _byoctl("invoke", "--local", "--serving-port", str(port), "byoctl-local", str(tmp_path / "bad.json"))
        assert result.returncode == 1
        assert re.search(r"byoctl: error: endpoint byoctl-local answered HTTP 4\d\d", result.stderr), result.stderr

        # 4. delete --local stops the deploy process, which removes model, endpoint and containers.
        result = _byoctl("delete", "--local", "byoctl-local")
        assert result.returncode == 0, result.stderr
        assert deploy.wait(timeout=120) == 0, log_path.read_text()
        assert "deleted endpoint byoctl-local" in log_path.read_text()
    finally:
        if deploy.poll() is None:
            deploy.send_signal(signal.SIGTERM)
            deploy.wait(timeout=120)
    assert not _local_mode_containers(running=True)

    # 5. transform --local on 1000 test images as JSON lines; the model it creates goes away after.
    data = tmp_path / "transform-in"
    data.mkdir()
    with open(data / "test.jsonl", "w") as f:
        for image in images[:1000]:
            f.write(json.dumps(image.tolist()) + "\n")
    result = _byoctl("transform", "--local", "--image", cpu_image, "--model-data", f"file://{model_tar}",
                     "--input", f"file://{data / 'test.jsonl'}",
                     "--output-path", f"file://{tmp_path / 'transform-out'}",
                     "--content-type", "application/jsonlines", "--accept", "application/jsonlines",
                     "--job-name", "byoctl-local-transform", "--serving-port", str(free_port()))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "[byoctl-local-transform] transform Completed" in result.stdout
    assert "deleted model byoctl-local-transform" in result.stdout
    rows = [json.loads(line) for line in (tmp_path / "transform-out" / "test.jsonl.out").read_text().splitlines()
            if line.strip()]
    predicted = np.array([int(row["label"]) for row in rows])
    assert predicted.shape == (1000,)
    assert (predicted == labels[:1000]).mean() > min_accuracy[1]
    assert not _local_mode_containers(running=True)
