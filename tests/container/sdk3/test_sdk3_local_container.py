"""SDK 3.x's local container mode drives the real image: ModelTrainer trains, a local endpoint serves.

- `ModelTrainer(training_image=IMAGE)` without `source_code` starts the container with no command (its
  compose service has no entrypoint): the image's CMD, `train`, trains the built-in model.
- With `source_code` it runs SDK 3's own driver instead: `/bin/bash -c ".../sm_drivers/sm_train.sh"`,
  which needs python3 and pip3 on PATH, installs `requirements` with pip, sets SM_* variables and runs
  the user's script with the hyperparameters as `--name value` arguments.
- Either model deploys through SDK 3's local session (`sagemaker.core.local.LocalSession`: CreateModel,
  CreateEndpointConfig, CreateEndpoint start `serve` under Docker Compose), answers predictions and
  goes away with its containers.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

from devkit.idx import mnist_arrays, write_subsets
from tests.container.test_local_mode import ROLE, _local_mode_containers

pytestmark = [pytest.mark.container, pytest.mark.slow]

N_TRAIN, N_TEST = 6000, 1000

# The user's training script: a Gluon MLP of its own, saved in MXNet's layout (what `serve` loads).
USER_SCRIPT = textwrap.dedent('''
    import argparse, json, os
    import mxnet as mx
    import numpy as np
    import byoc_probe  # installed from requirements.txt by SDK 3's driver, with the image's pip

    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--hidden", type=int)
    args = parser.parse_args()

    def idx(path):
        raw = open(path, "rb").read()
        dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(raw[3])]
        return np.frombuffer(raw, np.uint8, offset=4 + 4 * raw[3]).reshape(dims)

    channel = os.environ["SM_CHANNEL_TRAINING"]
    x = idx(os.path.join(channel, "images.idx")).reshape(-1, 1, 28, 28).astype("float32") / 255
    y = idx(os.path.join(channel, "labels.idx")).astype("float32")
    mx.random.seed(1)
    net = mx.gluon.nn.HybridSequential()
    net.add(mx.gluon.nn.Dense(args.hidden, activation="relu"), mx.gluon.nn.Dense(10))
    net.initialize(mx.init.Xavier())
    net.hybridize()
    trainer = mx.gluon.Trainer(net.collect_params(), "adam", {"learning_rate": 0.003})
    loss_fn = mx.gluon.loss.SoftmaxCrossEntropyLoss()
    data = mx.gluon.data.DataLoader(mx.gluon.data.ArrayDataset(x, y), batch_size=100, shuffle=True)
    for epoch in range(args.epochs):
        for xb, yb in data:
            with mx.autograd.record():
                loss = loss_fn(net(xb), yb)
            loss.backward()
            trainer.step(xb.shape[0])
        print(f"user script: epoch {epoch + 1} done", flush=True)
    model_dir = os.environ["SM_MODEL_DIR"]
    net.export(os.path.join(model_dir, "model"), 0)
    with open(os.path.join(model_dir, "model-shapes.json"), "w") as f:
        json.dump([{"name": "data", "shape": [1, 1, 28, 28]}], f)
    with open(os.path.join(os.environ["SM_OUTPUT_DATA_DIR"], "script.json"), "w") as f:
        json.dump({"probe": byoc_probe.VALUE, "hps": json.loads(os.environ["SM_HPS"]),
                   "entry": os.environ["SM_ENTRY_SCRIPT"], "job": os.environ["TRAINING_JOB_NAME"]}, f)
''')


def probe_wheel(folder: Path) -> Path:
    """A one-module pure-Python wheel, so that requirements.txt installs without any index."""
    files = {"byoc_probe.py": b"VALUE = 42\n",
             "byoc_probe-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: byoc-probe\nVersion: 1.0\n",
             "byoc_probe-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                               b"Tag: py3-none-any\n"}
    record = [f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
              f"{len(data)}" for name, data in files.items()]
    record.append("byoc_probe-1.0.dist-info/RECORD,,")
    files["byoc_probe-1.0.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    path = folder / "byoc_probe-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for name, data in files.items():
            wheel.writestr(name, data)
    return path


@pytest.fixture(scope="module")
def channels(mnist_dir, tmp_path_factory) -> Path:
    return write_subsets(mnist_dir, tmp_path_factory.mktemp("channels"), N_TRAIN, N_TEST)


def _train(image: str, channels: Path, root: Path, hyperparameters: dict, source_code=None) -> Path:
    """ModelTrainer in local container mode, working in `root`; its model.tar.gz."""
    from sagemaker.core.training.configs import Compute, InputData
    from sagemaker.train import ModelTrainer
    from sagemaker.train.model_trainer import Mode

    from byoctl.leftovers import remove_compose_containers

    trainer = ModelTrainer(training_image=image, training_mode=Mode.LOCAL_CONTAINER,
                           compute=Compute(instance_type="local", instance_count=1),
                           hyperparameters=hyperparameters, source_code=source_code, base_job_name="sdk3-local",
                           local_container_root=str(root), role=ROLE)
    try:
        trainer.train(input_data_config=[InputData(channel_name=name, data_source=str(channels / name))
                                         for name in ("training", "test")])
    finally:
        remove_compose_containers(root)
    return root / "compressed_artifacts" / "model.tar.gz"


def _members(tar_path: Path) -> dict[str, bytes]:
    with tarfile.open(tar_path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


@pytest.fixture(scope="module")
def builtin_model(offline, cpu_image, channels, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("trainer-builtin")
    model_tar = _train(cpu_image, channels, root, {"model": "mlp", "epochs": 2, "seed": 3})
    compose = (root / "docker-compose.yaml").read_text()
    assert "entrypoint" not in compose and "command" not in compose, compose  # the image's CMD ran
    return model_tar


@pytest.fixture(scope="module")
def script_model(offline, cpu_image, channels, tmp_path_factory) -> Path:
    from sagemaker.core.training.configs import SourceCode

    code = tmp_path_factory.mktemp("user-code")
    (code / "train_mlp.py").write_text(USER_SCRIPT)
    (code / "wheels").mkdir()
    wheel = probe_wheel(code / "wheels")
    (code / "requirements.txt").write_text(f"--no-index\n./wheels/{wheel.name}\n")
    root = tmp_path_factory.mktemp("trainer-script")
    return _train(cpu_image, channels, root, {"epochs": 2, "hidden": 64},
                  SourceCode(source_dir=str(code), entry_script="train_mlp.py", requirements="requirements.txt"))


def test_model_trainer_without_source_code_trains_the_builtin_model(builtin_model):
    files = _members(builtin_model)
    assert {"model-symbol.json", "model-0000.params", "model-shapes.json", "metadata.json"} <= set(files)
    metrics = json.loads(files["metadata.json"])["metrics"]
    assert metrics["test_accuracy"] > 0.85, metrics
    output = _members(builtin_model.parent / "output.tar.gz")
    assert json.loads(output["data/metrics.json"])["test_accuracy"] == metrics["test_accuracy"]


def test_model_trainer_with_source_code_runs_the_user_script(script_model):
    files = _members(script_model)
    assert {"model-symbol.json", "model-0000.params", "model-shapes.json"} <= set(files)
    report = json.loads(_members(script_model.parent / "output.tar.gz")["data/script.json"])
    assert report["probe"] == 42  # requirements.txt went through pip in the image
    assert report["hps"] == {"epochs": 2, "hidden": 64}
    assert report["entry"] == "train_mlp.py"
    assert report["job"].startswith("sdk3-local-")


@pytest.mark.parametrize("which", ["builtin_model", "script_model"])
def test_local_endpoint_deploys_predicts_and_is_deleted(request, which, cpu_image, local_session, mnist_dir):
    from byoctl.leftovers import local_leftovers_removed

    model_tar = request.getfixturevalue(which)
    images, labels = mnist_arrays(mnist_dir, "test", 200)
    client, runtime = local_session.sagemaker_client, local_session.sagemaker_runtime_client
    name = f"sdk3-{which.replace('_', '-')}"
    with local_leftovers_removed():
        client.create_model(ModelName=name, ExecutionRoleArn=ROLE, PrimaryContainer={
            "Image": cpu_image, "ModelDataUrl": f"file://{model_tar}", "Environment": {}})
        client.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[{
            "VariantName": "AllTraffic", "ModelName": name, "InitialInstanceCount": 1, "InstanceType": "local"}])
        try:
            client.create_endpoint(EndpointName=name, EndpointConfigName=name)  # returns once /ping is 200
            assert client.describe_endpoint(EndpointName=name)["EndpointStatus"] == "InService"
            if which == "builtin_model":
                _ask_the_builtin_model(runtime, name, images, labels)
            else:  # MXNet's layout without our metadata.json: AWS's default handlers answer
                _ask_the_default_handlers(runtime, name, images, labels)
        finally:
            client.delete_model(ModelName=name)
            client.delete_endpoint(EndpointName=name)  # stops the container
            client.delete_endpoint_config(EndpointConfigName=name)
    assert not _local_mode_containers(running=True)


def _ask_the_builtin_model(runtime, name: str, images: np.ndarray, labels: np.ndarray) -> None:
    answer = runtime.invoke_endpoint(EndpointName=name, ContentType="application/json", Accept="application/json",
                                     Body=json.dumps({"instances": images.tolist()}))
    assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200
    predicted = np.array([p["label"] for p in json.loads(answer["Body"].read())["predictions"]])
    assert (predicted == labels).mean() > 0.8
    from PIL import Image

    png = io.BytesIO()
    Image.fromarray(images[0]).save(png, format="PNG")
    answer = runtime.invoke_endpoint(EndpointName=name, ContentType="image/png", Accept="text/csv",
                                     Body=png.getvalue())
    assert answer["Body"].read().decode().strip() == str(predicted[0])


def _ask_the_default_handlers(runtime, name: str, images: np.ndarray, labels: np.ndarray) -> None:
    """Rows shaped like model-shapes.json's input, scaled as the script scaled them; raw scores back."""
    rows = images[:, None] / 255.0
    answer = runtime.invoke_endpoint(EndpointName=name, ContentType="application/json", Accept="application/json",
                                     Body=json.dumps(rows.tolist()))
    assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200
    scores = np.array(json.loads(answer["Body"].read()))
    assert scores.shape == (len(images), 10)
    assert (scores.argmax(axis=1) == labels).mean() > 0.8
    body = io.BytesIO()
    np.save(body, rows[:1].astype(np.float32))
    answer = runtime.invoke_endpoint(EndpointName=name, ContentType="application/x-npy", Accept="application/x-npy",
                                     Body=body.getvalue())
    assert np.load(io.BytesIO(answer["Body"].read())).argmax() == scores[0].argmax()
