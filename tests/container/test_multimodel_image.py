"""A multi-model endpoint in the CPU image, driven as SageMaker drives it: the image's label, models under
/opt/ml/models/<name>/model (AWS's own test model and ours of every kind), load, list with paging, get, invoke,
unload, 409, 404; and under `docker run --memory`, 507 before the container's limit, every worker alive, the
loaded models still answering, and an unload giving back the memory that a load then uses.

Neither SDK's local mode drives this contract (SDK 2 and 3 extract every archive under a MultiDataModel's prefix
into one /opt/ml/model and send /invocations with X-Amzn-SageMaker-Target-Model, never /models), so the requests
here are SageMaker's own, as its documentation gives them."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import requests

from devkit.mme_models import JSON, ZooModel, zoo
from devkit.script_models import AWS_ANSWER, AWS_INPUT, copy_aws_model
from devkit.servers import ContainerServer
from devkit.shell import sh

LABEL = "com.amazonaws.sagemaker.capabilities.multi-models"
MODELS = "/opt/ml/models"
LIMIT = "512m"
BIG_SIDE = 1536  # a FullyConnected of BIG_SIDE x BIG_SIDE float32 weights: 9 MiB of parameters


def big_model(folder: Path, index: int) -> Path:
    import mxnet as mx

    folder.mkdir(parents=True)
    symbol = mx.sym.FullyConnected(mx.sym.var("data"), num_hidden=BIG_SIDE, name="fc")
    symbol.save(str(folder / "model-symbol.json"))
    mx.nd.save(str(folder / "model-0000.params"),
               {"arg:fc_weight": mx.nd.full((BIG_SIDE, BIG_SIDE), 1.0 / BIG_SIDE),
                "arg:fc_bias": mx.nd.full((BIG_SIDE,), float(index))})
    (folder / "model-shapes.json").write_text(json.dumps([{"name": "data", "shape": [1, BIG_SIDE]}]))
    return folder


@pytest.fixture(scope="module")
def models_root(tmp_path_factory) -> Path:
    """SageMaker's layout: /opt/ml/models/<name>/model, each the folder unpacked from the model's archive."""
    root = tmp_path_factory.mktemp("models")
    copy_aws_model(root / "aws" / "model")
    for index in range(12):
        big_model(root / f"big-{index:02d}" / "model", index)
    return root


@pytest.fixture(scope="module")
def ours(models_root) -> list[ZooModel]:
    """Six models of ours (two of each kind) in the same layout."""
    models = zoo(models_root / "zoo", 6)
    for model in models:
        shutil.move(str(model.folder.parent), models_root / model.name)
    return models


def start(image: str, models_root: Path, tmp_path: Path, **extra_env: str) -> ContainerServer:
    (tmp_path / "no-model").mkdir(exist_ok=True)
    return ContainerServer(image, tmp_path / "no-model", env={"SAGEMAKER_MULTI_MODEL": "true",
                                                             "SAGEMAKER_MODEL_SERVER_WORKERS": "2", **extra_env},
                           mounts={models_root: f"{MODELS}:ro"}, extra=("--memory", LIMIT))


def load(server: ContainerServer, name: str) -> requests.Response:
    return requests.post(server.url("/models"), json={"model_name": name, "url": f"{MODELS}/{name}/model"},
                         headers={"Accept": JSON}, timeout=300)


def invoke(server: ContainerServer, name: str, body: bytes, target: str | None = None) -> requests.Response:
    return requests.post(server.url(f"/models/{name}/invoke"), data=body,
                         headers={"Content-Type": JSON, "Accept": JSON,
                                  "X-Amzn-SageMaker-Target-Model": target or f"{name}.tar.gz"}, timeout=60)


def container_memory(server: ContainerServer) -> int:
    """Bytes the container's cgroup charges, less its inactive file pages (as the server counts them)."""
    script = ("if [ -f /sys/fs/cgroup/memory.current ]; then cat /sys/fs/cgroup/memory.current; "
              "grep '^inactive_file ' /sys/fs/cgroup/memory.stat | cut -d' ' -f2; else "
              "cat /sys/fs/cgroup/memory/memory.usage_in_bytes; "
              "grep '^total_inactive_file ' /sys/fs/cgroup/memory/memory.stat | cut -d' ' -f2; fi")
    current, inactive = sh("docker", "exec", server.name, "sh", "-c", script).stdout.split()
    return int(current) - int(inactive)


def test_the_image_says_it_serves_many_models(cpu_image):
    labels = json.loads(sh("docker", "inspect", "--format", "{{json .Config.Labels}}", cpu_image).stdout)
    assert labels.get(LABEL) == "true"


def test_the_contract_with_awss_model_and_ours(cpu_image, models_root, ours, tmp_path):
    server = start(cpu_image, models_root, tmp_path)
    try:
        server.wait_ready()
        names = ["aws"] + [model.name for model in ours]
        for name in names:
            answer = load(server, name)
            assert answer.status_code == 200, answer.text
        assert load(server, "aws").status_code == 409
        answer = invoke(server, "aws", json.dumps(AWS_INPUT).encode(), target="aws/model.tar.gz")
        assert (answer.status_code, answer.content) == (200, AWS_ANSWER)
        for model in ours:
            answer = invoke(server, model.name, model.body)
            assert answer.status_code == 200 and model.expected(answer.content), (model.kind, answer.text)
        pages, token, listed = 0, None, []
        while True:
            page = requests.get(server.url("/models"), params={"limit": 3, **({"next_page_token": token}
                                                                               if token else {})}, timeout=30).json()
            listed += [m["modelName"] for m in page["models"]]
            pages += 1
            token = page.get("nextPageToken")
            if not token:
                break
        assert listed == sorted(names) and pages == 3
        assert requests.get(server.url("/models/aws"), timeout=30).json() == {"modelName": "aws",
                                                                              "modelUrl": f"{MODELS}/aws/model"}
        assert requests.delete(server.url("/models/aws"), timeout=60).status_code == 200
        assert invoke(server, "aws", b"[[1, 2]]").status_code == 404
        assert requests.get(server.url("/models/aws"), timeout=30).status_code == 404
        assert requests.delete(server.url("/models/aws"), timeout=30).status_code == 404
    finally:
        server.remove()


def test_507_before_the_memory_limit_and_the_others_keep_serving(cpu_image, models_root, tmp_path):
    server = start(cpu_image, models_root, tmp_path)
    try:
        server.wait_ready()
        assert load(server, "aws").status_code == 200
        loaded, refused = [], None
        for index in range(12):
            name = f"big-{index:02d}"
            answer = load(server, name)
            if answer.status_code == 507:
                refused = (name, answer.json()["error"])
                break
            assert answer.status_code == 200, answer.text
            loaded.append(name)
        assert refused is not None, f"all of {loaded} fit in {LIMIT}"
        assert len(loaded) >= 2, refused
        assert re.match(rf"model {refused[0]} needs about \d+ MiB .* is free \(the cgroup limit", refused[1])
        state = json.loads(sh("docker", "inspect", "--format", "{{json .State}}", server.name).stdout)
        assert state["Running"] and not state["OOMKilled"]
        assert len(re.findall(r"Booting worker with pid", server.output())) == 2  # no worker died
        for index, name in enumerate(loaded):
            answer = invoke(server, name, json.dumps([[0.0] * BIG_SIDE]).encode())
            assert answer.status_code == 200 and json.loads(answer.content)[0][0] == pytest.approx(index)
        assert invoke(server, "aws", b"[[1, 2]]").content == AWS_ANSWER

        before = container_memory(server)
        assert requests.delete(server.url(f"/models/{loaded[0]}"), timeout=120).status_code == 200
        freed = before - container_memory(server)
        print(f"{len(loaded)} big models loaded in {LIMIT}; unloading one freed {freed / 2**20:.0f} MiB")
        assert freed > 2 * 4 * BIG_SIDE * BIG_SIDE * 0.8  # at least most of its two copies' weights
        answer = load(server, refused[0])  # what did not fit now does
        assert answer.status_code == 200, answer.text
    finally:
        server.remove()
