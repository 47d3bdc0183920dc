"""Script mode and AWS's default handlers through the Flask app (`app.test_client()`), as `serve` builds it:
/ping until model_fn has returned, errors as JSON, batch transform's requests and /execution-parameters."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from devkit.script_models import AWS_ANSWER, copy_aws_model, write_script
from mxnet_byoc.serve import app as predictor
from mxnet_byoc.serve import digits, selection, settings

JSON = "application/json"


def config() -> settings.ServerConfig:
    return settings.ServerConfig(host="127.0.0.1", port=8080, workers=3, timeout_s=60, max_payload_mb=6,
                                 batch_strategy="MULTI_RECORD", default_accept=JSON)


def start(model_dir: Path, **env: str):
    """The app of one worker, with the load `serve` chooses (selection.loader) for `model_dir` and `env`."""
    load = selection.loader(digits.loader(JSON), JSON, model_dir, {**env})
    app = predictor.create_app(model_dir, config(), load=load)
    return app, app.extensions[predictor.LOADER_KEY]


@pytest.fixture
def aws_model(tmp_path) -> Path:
    return copy_aws_model(tmp_path / "model")


def test_ping_is_503_until_model_fn_has_returned(aws_model):
    write_script(aws_model / "code", """
        import time

        def model_fn(model_dir):
            time.sleep(1.0)
            return "ready"

        def transform_fn(model, body, content_type, accept):
            return model
    """)
    app, loader = start(aws_model, SAGEMAKER_PROGRAM="inference.py")
    client = app.test_client()
    first = client.get("/ping")
    assert first.status_code == 503 and "loading" in first.get_json()["error"]
    assert client.post("/invocations", data=b"x", content_type=JSON).status_code == 503
    assert loader.wait(30)
    assert client.get("/ping").status_code == 200
    assert client.post("/invocations", data=b"x", content_type=JSON).get_data() == b"ready"


def test_default_handlers_answer_as_aws_pins(aws_model):
    app, loader = start(aws_model)
    assert loader.wait(30), loader.reason
    response = app.test_client().post("/invocations", data=b"[[1, 2]]", content_type=JSON)
    assert (response.status_code, response.get_data(), response.headers["Content-Type"]) == (200, AWS_ANSWER, JSON)


def test_an_unsupported_content_type_is_415_not_awss_500(aws_model):
    app, loader = start(aws_model)
    assert loader.wait(30), loader.reason
    response = app.test_client().post("/invocations", data=b"\x89PNG", content_type="image/png")
    assert response.status_code == 415 and "application/json, text/csv, application/x-npy" in response.get_json()[
        "error"]


def test_a_handler_exception_is_a_500_with_a_json_reason_and_a_logged_traceback(aws_model, caplog):
    write_script(aws_model / "code", """
        def model_fn(model_dir):
            return {}

        def transform_fn(model, body, content_type, accept):
            return model["missing"]
    """)
    app, loader = start(aws_model, SAGEMAKER_PROGRAM="inference.py")
    assert loader.wait(30), loader.reason
    with caplog.at_level(logging.ERROR):
        response = app.test_client().post("/invocations", data=b"1", content_type=JSON)
    assert response.status_code == 500 and response.headers["Content-Type"] == JSON
    assert response.get_json() == {"error": "transform_fn raised KeyError: 'missing'"}
    assert "Traceback" in caplog.text and 'return model["missing"]' in caplog.text
    assert app.test_client().get("/ping").status_code == 200  # the worker goes on serving


def test_no_model_fn_and_a_model_not_in_mxnets_layout_is_a_clear_ping_reason(tmp_path, caplog):
    model_dir = tmp_path / "model"
    write_script(model_dir / "code", "def predict_fn(data, model):\n    return data\n")
    (model_dir / "weights.pt").write_bytes(b"not mxnet")
    with caplog.at_level(logging.ERROR):
        app, loader = start(model_dir, SAGEMAKER_PROGRAM="inference.py")
        assert loader.wait_first_attempt(30)  # set once the failure is logged
    ping = app.test_client().get("/ping")
    assert ping.status_code == 503
    reason = ping.get_json()["error"]
    assert "defines no model_fn" in reason and "model-symbol.json, model-0000.params, model-shapes.json" in reason
    assert "define model_fn(model_dir)" in reason
    assert reason.split(": ", 1)[1] in caplog.text


def test_batch_transform_through_user_handlers(aws_model):
    """A MultiRecord mini-batch of CSV lines through input_fn, predict_fn and output_fn of the user."""
    write_script(aws_model / "code", """
        def model_fn(model_dir):
            return sum

        def input_fn(body, content_type):
            return [[float(v) for v in line.split(",")] for line in body.splitlines()]

        def predict_fn(rows, model):
            return [model(row) for row in rows]

        def output_fn(totals, accept):
            return "".join(f"{t}\\n" for t in totals), "text/csv"
    """)
    app, loader = start(aws_model, SAGEMAKER_PROGRAM="inference.py")
    assert loader.wait(30), loader.reason
    client = app.test_client()
    assert client.get("/execution-parameters").get_json() == {
        "MaxConcurrentTransforms": 3, "BatchStrategy": "MultiRecord", "MaxPayloadInMB": 6}
    response = client.post("/invocations", data=b"1,2\n3,4\n5,6\n", content_type="text/csv",
                           headers={"Accept": "text/csv"})
    assert (response.status_code, response.get_data(), response.headers["Content-Type"]) == (
        200, b"3.0\n7.0\n11.0\n", "text/csv")


def test_batch_transform_through_the_default_handlers(aws_model):
    app, loader = start(aws_model)
    assert loader.wait(30), loader.reason
    response = app.test_client().post("/invocations", data=b"1,2\n3,4\n5,6\n", content_type="text/csv",
                                      headers={"Accept": "text/csv"})
    assert response.get_data() == b"4.9999918937683105\n10.999981880187988\n16.999971389770508\n"
    assert json.loads(app.test_client().post("/invocations", data=b"[[1, 2], [3, 4]]", content_type=JSON)
                      .get_data()) == [[4.9999918937683105], [10.999981880187988]]
