"""docs/openapi.yaml is true: a valid OpenAPI 3 document that lists the app's routes and every status its
code raises; the live server's answers to every content type, Accept and error conform to it; and
schemathesis, run against the live server, finds no 5xx, no answer outside the document, no hang and no
dead worker."""

from __future__ import annotations

import collections
import io
import json
import re
import shutil

import numpy as np
import pytest
import requests
import schemathesis
import yaml
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate
from PIL import Image
from schemathesis.specs.openapi.checks import positive_data_acceptance

from devkit.bodies import npy, png
from devkit.project import ROOT
from devkit.servers import Server
from mxnet_byoc.serve import app as predictor
from mxnet_byoc.serve import codecs, http_errors, nginx
from mxnet_byoc.serve import settings as serve_settings

DOC = ROOT / "docs" / "openapi.yaml"
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
WORKERS = 2
# Bounded: the whole schemathesis run (three operations) stays well under a minute on this machine.
MAX_EXAMPLES = 500
REQUEST_TIMEOUT_S = 10  # far above any answer here: a request that takes longer counts as a hang

# The document's binary and text bodies go out as they are generated: strings as UTF-8, bytes as bytes.
schemathesis.serializer.alias(["text/csv", "application/jsonlines"], "text/plain")
schemathesis.serializer.alias(["application/x-npy", "image/png", "image/jpeg"], "application/octet-stream")
schema = schemathesis.openapi.from_path(str(DOC))
statuses_seen: collections.Counter = collections.Counter()


def document() -> dict:
    return yaml.safe_load(DOC.read_text())


@pytest.fixture(scope="module")
def server(tmp_path_factory, trained_model_dir) -> Server:
    base = tmp_path_factory.mktemp("openapi")
    shutil.copytree(trained_model_dir, base / "model")
    server = Server(base, base / "serve.log", SAGEMAKER_MODEL_SERVER_WORKERS=str(WORKERS))
    try:
        server.wait_loaded()
        yield server
    finally:
        server.stop()


def test_document_is_valid_openapi_3():
    validate(document())


def test_document_lists_exactly_the_routes_the_server_answers(server, tmp_path):
    paths = document()["paths"]
    # Flask's routes (POST /invocations is a WSGI callable in front of Flask: the live check below covers it).
    app = predictor.create_app(tmp_path / "no-model", serve_settings.from_env({}))
    assert {rule.rule for rule in app.url_map.iter_rules() if rule.endpoint != "static"} <= set(paths)
    for path, item in paths.items():
        for method in ("GET", "POST", "PUT", "DELETE", "PATCH"):
            response = requests.request(method, server.url(path), timeout=REQUEST_TIMEOUT_S)
            if method.lower() in item:
                assert response.status_code not in (404, 405), f"{method} {path}: {response.status_code}"
            else:
                assert response.status_code == 405, f"{method} {path} is answered but not described"
                assert method not in response.headers["Allow"] and set(response.json()) == {"error"}


def error_classes(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub} | error_classes(sub)
    return found


def test_document_lists_every_status_the_code_raises():
    responses = {path: {method: set(operation["responses"]) for method, operation in item.items()
                        if method in HTTP_METHODS} for path, item in document()["paths"].items()}
    # Every error with a status of its own (http_errors.py: client mistakes, server limits, the user's code's
    # 500), the app's 500 for its own faults, 503 until the model is loaded, and nginx's answers for a worker
    # that died while serving the request (502) or a request that waited too long for one (504).
    # A multi-model server's own errors (404, 409, 507 on its /models routes) are docs/multi-model.md's.
    raised = {str(cls.status) for cls in error_classes(http_errors.HttpError)
              if not cls.__module__.startswith("mxnet_byoc.serve.multimodel")} | {"200", "500", "503"}
    raised |= {str(status) for status in (502, 504) if status in nginx.REASONS}
    assert {"400", "406", "408", "413", "415"} <= raised  # the walk over subclasses found them all
    assert responses["/invocations"]["post"] == raised
    assert responses["/ping"]["get"] == {"200", "503"}
    assert responses["/execution-parameters"]["get"] == {"200"}


def jpeg(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def live_requests(images: np.ndarray) -> list[tuple[str, str, bytes | None, dict[str, str], int]]:
    """(method, path, body, headers, expected status) for every content type, Accept and error status."""
    one = images[:3]
    bodies = {
        "application/json": json.dumps({"instances": one.tolist()}).encode(),
        "application/jsonlines": b"\n".join(json.dumps(image.reshape(-1).tolist()).encode() for image in one),
        "text/csv": b"\n".join(",".join(map(str, image.reshape(-1))).encode() for image in one),
        "application/x-npy": npy(one),
        "image/png": png(images[0]),
        "image/jpeg": jpeg(images[0]),
    }
    cases = [("GET", "/ping", None, {}, 200), ("GET", "/execution-parameters", None, {}, 200)]
    for content_type, body in bodies.items():
        for accept in ("application/json", "application/jsonlines", "text/csv", "*/*"):
            cases.append(("POST", "/invocations", body, {"Content-Type": content_type, "Accept": accept}, 200))
        cases.append(("POST", "/invocations", body[: len(body) // 2], {"Content-Type": content_type}, 400))
    json_body = bodies["application/json"]
    cases += [
        ("POST", "/invocations", json_body, {"Content-Type": "application/json", "Accept": "application/xml"}, 406),
        ("POST", "/invocations", json_body, {"Content-Type": "application/xml"}, 415),
        ("POST", "/invocations", b"\0" * (7 * 1024 * 1024), {"Content-Type": "application/x-npy"}, 413),
        ("GET", "/invocations", None, {}, 405),
        ("GET", "/no-such-path", None, {}, 404),
    ]
    return cases


def test_live_answers_conform_to_the_document(server, digits):
    paths = document()["paths"]
    for method, path, body, headers, expected in live_requests(digits[0]):
        response = requests.request(method, server.url(path), data=body, headers=headers, timeout=REQUEST_TIMEOUT_S)
        what = f"{method} {path} {headers}"
        assert response.status_code == expected, f"{what}: {response.status_code} {response.text[:300]}"
        content_type = codecs.media_type(response.headers.get("Content-Type"))
        if method.lower() not in paths.get(path, {}):  # 404 and 405 are described in words: an `Error` object
            assert expected in (404, 405) and content_type == codecs.JSON, what
            assert set(response.json()) == {"error"}, what
            continue
        described = paths[path][method.lower()]["responses"].get(str(expected))
        assert described is not None, f"{what}: status {expected} is not in the document"
        if "$ref" in described:
            described = document()["components"]["responses"][described["$ref"].rsplit("/", 1)[1]]
        assert content_type in described["content"], f"{what}: {content_type} is not documented for {expected}"
        schema[path][method].validate_response(response)  # the body against the document's schema


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                                 HealthCheck.function_scoped_fixture])
def test_schemathesis_finds_no_server_error_and_no_undocumented_answer(case, server):
    # "Positive" binary or text bodies are any bytes or any string: the document cannot say which
    # of them are valid .npy, PNG or CSV, so the check that they get a 2xx does not apply.
    response = case.call(base_url=server.url(""), timeout=REQUEST_TIMEOUT_S)
    statuses_seen[f"{case.operation.label} {case.media_type or '-'} {response.status_code}"] += 1
    case.validate_response(response, excluded_checks=[positive_data_acceptance])


def test_server_is_healthy_after_schemathesis(server):
    """Runs after the fuzzing above (pytest keeps the order of a module): no worker died or hung."""
    assert statuses_seen, "the schemathesis test did not run first"
    print("\nschemathesis answers by operation and status:",
          json.dumps(dict(sorted(statuses_seen.items())), indent=1), f"total {sum(statuses_seen.values())}")
    assert requests.get(server.url("/ping"), timeout=2).status_code == 200
    log = server.output()
    assert len(re.findall(r"Booting worker with pid", log)) == WORKERS, "a worker was restarted"
    assert "WORKER TIMEOUT" not in log and "Traceback" not in log
    assert not re.search(r'" 5\d\d \d+ [\d.]+s$', log, re.M), "a request got a 5xx"
    assert not [label for label in statuses_seen if label.rsplit(" ", 1)[1].startswith("5")]
