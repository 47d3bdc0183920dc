"""A multi-model server's worker app (serve/app.py with SAGEMAKER_MULTI_MODEL=true) through Flask's test client, its
models loaded by a manager in this process: /models/<name>/invoke, /ping, /invocations, /execution-parameters."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from devkit.mme_models import code_model
from devkit.script_models import AWS_ANSWER, copy_aws_model
from mxnet_byoc.serve import nginx, settings
from mxnet_byoc.serve.app import REPLICA_KEY, create_app
from mxnet_byoc.serve.multimodel.manager import Manager
from mxnet_byoc.serve.multimodel.manager import create_app as create_models_app

JSON = "application/json"


@pytest.fixture
def endpoint(tmp_path):
    """(the worker's test client, the manager's) with one worker: this process."""
    folder = tmp_path / "run"
    folder.mkdir()
    config = settings.from_env({"SAGEMAKER_MULTI_MODEL": "true", "SAGEMAKER_MODEL_SERVER_WORKERS": "1",
                                "SAGEMAKER_MAX_PAYLOAD_IN_MB": "1"})
    manager = Manager(folder, lambda: {os.getpid()}, config.max_payload_bytes, env={})
    app = create_app(config=config, models_folder=folder)
    replica = app.extensions[REPLICA_KEY]
    assert replica.started.wait(30)
    models = create_models_app(manager).test_client()
    yield app.test_client(), models
    for model in models.get("/models").json["models"]:  # their code leaves sys.modules with them
        assert models.delete(f"/models/{model['modelName']}").status_code == 200
    replica.close()
    manager.close()


def load(models, name: str, folder: Path) -> None:
    answer = models.post("/models", json={"model_name": name, "url": str(folder)})
    assert answer.status_code == 200, answer.json


def test_a_loaded_model_answers_at_its_path(endpoint, tmp_path):
    worker, models = endpoint
    assert worker.get("/ping").status_code == 200  # before any model
    load(models, "aws", copy_aws_model(tmp_path / "aws"))
    answer = worker.post("/models/aws/invoke", data=b"[[1, 2]]", content_type=JSON, headers={"Accept": JSON})
    assert (answer.status_code, answer.data, answer.content_type) == (200, AWS_ANSWER, JSON)


def test_a_model_not_loaded_is_404_and_other_methods_405(endpoint):
    worker, _ = endpoint
    missing = worker.post("/models/nope/invoke", data=b"[[1, 2]]", content_type=JSON)
    assert missing.status_code == 404 and missing.json == {"error": "model 'nope' is not loaded"}
    wrong = worker.get("/models/nope/invoke")
    assert wrong.status_code == 405 and wrong.headers["Allow"] == "POST"
    assert worker.post("/models/a/b/invoke").status_code == 404  # no such route: a name has no slash


def test_invocations_says_where_to_go(endpoint):
    worker, _ = endpoint
    answer = worker.post("/invocations", data=b"{}", content_type=JSON)
    assert answer.status_code == 404 and "POST /models/<name>/invoke" in answer.json["error"]


def test_the_body_limit_holds_for_models_too(endpoint, tmp_path):
    worker, models = endpoint
    load(models, "aws", copy_aws_model(tmp_path / "aws"))
    answer = worker.post("/models/aws/invoke", data=b"x" * (settings.MIB + 1), content_type=JSON)
    assert answer.status_code == 413 and "the limit is 1 MB (SAGEMAKER_MAX_PAYLOAD_IN_MB)" in answer.json["error"]


def test_custom_attributes_reach_the_models_context(endpoint, tmp_path):
    worker, models = endpoint
    load(models, "coded", code_model(tmp_path / "coded", 5))
    answer = worker.post("/models/coded/invoke", data=b"[[1, 2]]", content_type=JSON,
                         headers={"Accept": JSON, "X-Amzn-SageMaker-Custom-Attributes": "c=1",
                                  "X-Amzn-SageMaker-Target-Model": "coded.tar.gz"})
    assert json.loads(answer.data) == {"model": 5, "sums": [3], "attributes": "c=1"}


def test_execution_parameters_name_the_strategy_as_the_api_does(endpoint):
    worker, _ = endpoint
    assert worker.get("/execution-parameters").json == {"MaxConcurrentTransforms": 1, "BatchStrategy": "MultiRecord",
                                                        "MaxPayloadInMB": 1}


def test_nginx_sends_the_management_api_to_the_manager_and_invocations_to_the_workers(tmp_path):
    config = settings.from_env({"SAGEMAKER_MULTI_MODEL": "true"})
    nginx.write_config(config, tmp_path, tmp_path / "gunicorn.sock", tmp_path / "models.sock")
    checked = subprocess.run([*nginx.command(tmp_path), "-t"], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr
    conf = (tmp_path / nginx.CONFIG_FILE).read_text()
    assert f"server unix:{tmp_path / 'models.sock'} max_fails=0;" in conf
    route = re.search(r"location ~ (\S+) \{\s*uwsgi_pass models_api;", conf)
    assert route is not None
    managed = re.compile(route.group(1).strip('"'))
    assert managed.match("/models") and managed.match("/models/m-1")
    assert not managed.match("/models/m-1/invoke") and not managed.match("/invocations")
    assert f"uwsgi_read_timeout {nginx.LOAD_TIMEOUT_S}s;" in conf
    assert "models_api" not in nginx.render(settings.from_env({}), tmp_path, tmp_path / "gunicorn.sock")
