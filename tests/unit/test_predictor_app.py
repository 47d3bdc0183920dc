"""The Flask app through `app.test_client()`, with a tiny model whose answers are known in advance
(serving_models.py: an image whose pixel k is lit is labelled k)."""

from __future__ import annotations

import io
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from serving_models import export_indicator_model, image_of

from devkit.bodies import npy
from devkit.waiting import wait_until
from mxnet_byoc import modeldir
from mxnet_byoc.serve import app as predictor
from mxnet_byoc.serve import settings

LIMIT_MB = 1


def config(**changes) -> settings.ServerConfig:
    return settings.ServerConfig(**{
        "host": "127.0.0.1", "port": 8080, "workers": 2, "timeout_s": 60, "max_payload_mb": LIMIT_MB,
        "batch_strategy": "MULTI_RECORD", "default_accept": "application/json", **changes,
    })


def ready_app(model_dir: Path, **changes):
    app = predictor.create_app(model_dir, config(**changes))
    assert app.extensions[predictor.LOADER_KEY].wait(30), app.extensions[predictor.LOADER_KEY].reason
    return app


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return export_indicator_model(tmp_path_factory.mktemp("indicator") / "model")


@pytest.fixture(scope="module")
def client(model_dir):
    return ready_app(model_dir).test_client()


def labels_of(response) -> list:
    assert response.status_code == 200, response.get_data(as_text=True)
    return [p["label"] for p in response.get_json()["predictions"]]


def test_ping_is_200_once_loaded(client):
    response = client.get("/ping")
    assert response.status_code == 200 and response.get_json() == {"status": "healthy"}


LABELS = [7, 2, 1, 0, 4]


@pytest.mark.parametrize(
    "content_type, body",
    [
        ("application/json", json.dumps({"instances": [image_of(k).tolist() for k in LABELS]})),
        ("application/json", json.dumps({"inputs": [image_of(k).ravel().tolist() for k in LABELS]})),
        ("text/csv", "\n".join(",".join(map(str, image_of(k).ravel())) for k in LABELS)),
        ("application/x-npy", npy(np.stack([image_of(k) for k in LABELS]))),
        ("application/x-npy", npy(np.stack([image_of(k) for k in LABELS]).astype(np.float32) / 255)),
        ("application/jsonlines", "\n".join(json.dumps(image_of(k).tolist()) for k in LABELS)),
    ],
)
def test_every_array_content_type(client, content_type, body):
    response = client.post("/invocations", data=body, content_type=content_type)
    assert labels_of(response) == LABELS
    probabilities = np.array([p["probabilities"] for p in response.get_json()["predictions"]])
    assert probabilities.shape == (5, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    assert probabilities[0, 7] == pytest.approx(np.exp(20) / (np.exp(20) + 9), rel=1e-5)


@pytest.mark.parametrize("fmt, content_type", [("PNG", "image/png"), ("JPEG", "image/jpeg")])
def test_pictures(client, fmt, content_type):
    # A bright dot in the top-left corner of a grey photo ends up at the centre: pixels 0-9 stay dark,
    # so all scores are equal and the label is the first class; what matters is a 200 and 10 scores.
    picture = np.full((90, 60, 3), 200, dtype=np.uint8)
    picture[5:15, 5:12] = 20
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, fmt)
    response = client.post("/invocations", data=buffer.getvalue(), content_type=content_type)
    assert labels_of(response) == [0]
    assert len(response.get_json()["predictions"][0]["probabilities"]) == 10


@pytest.mark.parametrize(
    "accept, content_type, expected",
    [
        (None, "application/json", None),
        ("*/*", "application/json", None),
        ("application/json", "application/json", None),
        ("text/csv", "text/csv", b"7\n2\n"),
        ("application/jsonlines", "application/jsonlines", None),
    ],
)
def test_accept(client, accept, content_type, expected):
    headers = {"Accept": accept} if accept else {}
    body = json.dumps({"instances": [image_of(7).tolist(), image_of(2).tolist()]})
    response = client.post("/invocations", data=body, content_type="application/json", headers=headers)
    assert response.status_code == 200
    assert response.mimetype == content_type
    if expected is not None:
        assert response.data == expected
    if content_type == "application/jsonlines":
        assert [json.loads(line)["label"] for line in response.data.splitlines()] == [7, 2]


def test_default_accept_from_config(model_dir):
    client = ready_app(model_dir, default_accept="text/csv").test_client()
    response = client.post("/invocations", data=npy(image_of(3)), content_type="application/x-npy")
    assert (response.mimetype, response.data) == ("text/csv", b"3\n")


def test_custom_attributes_and_unknown_headers_are_ignored(client):
    response = client.post("/invocations", data=npy(image_of(4)), content_type="application/x-npy",
                           headers={"X-Amzn-SageMaker-Custom-Attributes": "trace=1", "X-Whatever": "y"})
    assert labels_of(response) == [4]


def error_of(response, status: int) -> str:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    return response.get_json()["error"]


def test_unsupported_content_type_is_415(client):
    message = error_of(client.post("/invocations", data=b"<x/>", content_type="application/xml"), 415)
    assert "application/xml" in message and "text/csv" in message and "image/png" in message


def test_unsupported_accept_is_406(client):
    response = client.post("/invocations", data=npy(image_of(1)), content_type="application/x-npy",
                           headers={"Accept": "application/xml"})
    assert "application/jsonlines" in error_of(response, 406)


@pytest.mark.parametrize(
    "content_type, body, fragment",
    [
        ("application/json", "{", "not valid JSON"),
        ("application/json", json.dumps({"instances": [[1, 2, 3]]}), "28x28"),
        ("text/csv", "1,2", "expected 784"),
        ("application/x-npy", b"junk", "not a .npy array"),
        ("image/png", b"junk", "not a readable PNG or JPEG"),
        ("application/json", "", "empty"),
    ],
)
def test_bad_bodies_are_400(client, content_type, body, fragment):
    assert fragment in error_of(client.post("/invocations", data=body, content_type=content_type), 400)


def test_payload_limit_is_413_and_just_below_it_works(client):
    limit = LIMIT_MB * 1024 * 1024
    line = ",".join(["0"] * 784)
    count = limit // (len(line) + 1)
    body = "\n".join([line] * count) + "\n"
    assert len(body) <= limit
    assert len(labels_of(client.post("/invocations", data=body, content_type="text/csv"))) == count
    message = error_of(client.post("/invocations", data=body + line, content_type="text/csv"), 413)
    assert "1 MB" in message and "SAGEMAKER_MAX_PAYLOAD_IN_MB" in message


def test_execution_parameters(client):
    response = client.get("/execution-parameters")
    assert response.status_code == 200
    assert response.get_json() == {"MaxConcurrentTransforms": 2, "BatchStrategy": "MultiRecord",
                                   "MaxPayloadInMB": LIMIT_MB}


def test_unknown_paths_and_methods_answer_json(client):
    assert "not found" in error_of(client.get("/nothing"), 404).lower()
    error_of(client.get("/invocations"), 405)


def test_a_server_error_is_500_logged_and_the_app_goes_on(model_dir, caplog, monkeypatch):
    app = ready_app(model_dir)
    model = app.extensions[predictor.LOADER_KEY].handler.model
    monkeypatch.setattr(model, "predict", lambda batch: 1 / 0)
    client = app.test_client()
    with caplog.at_level(logging.ERROR, logger="mxnet_byoc"):
        message = error_of(client.post("/invocations", data=npy(image_of(5)), content_type="application/x-npy"), 500)
    assert "ZeroDivisionError" in message and "Traceback" not in message
    assert any(r.exc_info and r.exc_info[0] is ZeroDivisionError for r in caplog.records)
    monkeypatch.undo()
    assert labels_of(client.post("/invocations", data=npy(image_of(5)), content_type="application/x-npy")) == [5]


def test_without_a_model_ping_and_invocations_are_503_with_the_reason(tmp_path):
    client = predictor.create_app(tmp_path / "model", config()).test_client()
    wait_until(lambda: "does not exist" in error_of(client.get("/ping"), 503), what="503 naming the folder")
    for response in (client.get("/ping"),
                     client.post("/invocations", data=npy(image_of(1)), content_type="application/x-npy")):
        message = error_of(response, 503)
        assert f"model directory {tmp_path / 'model'} does not exist" in message


def test_a_model_that_appears_later_is_loaded(tmp_path, model_dir):
    app = predictor.create_app(tmp_path / "model", config())
    client = app.test_client()
    wait_until(lambda: "does not exist" in error_of(client.get("/ping"), 503), what="503 naming the folder")
    shutil.copytree(model_dir, tmp_path / "incoming")
    (tmp_path / "incoming").rename(tmp_path / "model")
    assert app.extensions[predictor.LOADER_KEY].wait(15)
    assert client.get("/ping").status_code == 200


@pytest.mark.parametrize(
    "breakage, fragment",
    [
        (lambda d: (d / modeldir.SYMBOL_FILE).write_text("{ not json"), "model-symbol.json"),
        (lambda d: (d / modeldir.PARAMS_FILE).write_bytes(b"\0" * 64), "MXNet cannot load the model"),
        (lambda d: (d / modeldir.PARAMS_FILE).unlink(), "model-0000.params is missing"),
        (lambda d: (d / modeldir.METADATA_FILE).write_text(json.dumps(
            {"input_shape": [1, 28, 28], "classes": ["a", "b"]})), "lists 2 classes but the network outputs 10"),
        (lambda d: (d / modeldir.METADATA_FILE).write_text(json.dumps(
            {"input_shape": [1, 27, 27], "classes": list(range(10))})), "MXNet cannot load the model"),
    ],
)
def test_an_unusable_model_is_503_with_a_reason(tmp_path, model_dir, breakage, fragment):
    broken = tmp_path / "model"
    shutil.copytree(model_dir, broken)
    breakage(broken)
    app = predictor.create_app(broken, config())
    loader = app.extensions[predictor.LOADER_KEY]
    wait_until(lambda: "no usable model" in loader.reason, what="the reason")
    assert loader.handler is None
    assert fragment in error_of(app.test_client().get("/ping"), 503)


def test_classes_from_metadata_are_the_labels(tmp_path):
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    client = ready_app(export_indicator_model(tmp_path / "model", names)).test_client()
    response = client.post("/invocations", data=npy(image_of(8)), content_type="application/x-npy")
    assert labels_of(response) == ["eight"]
    csv = client.post("/invocations", data=npy(image_of(8)), content_type="application/x-npy",
                      headers={"Accept": "text/csv"})
    assert csv.data == b"eight\n"
