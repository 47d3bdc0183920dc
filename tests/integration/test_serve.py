"""`container/serve` as SageMaker runs it (nginx in front of gunicorn's 2 workers) with a model trained by
`container/train`: every content type, every Accept, every error status, the payload limit, /execution-parameters."""

from __future__ import annotations

import io
import json
import re
import shutil
import time

import numpy as np
import pytest
import requests
from PIL import Image

from devkit.bodies import npy
from devkit.servers import Server

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory, trained_model_dir) -> Server:
    base = tmp_path_factory.mktemp("serve")
    shutil.copytree(trained_model_dir, base / "model")
    server = Server(base, base / "serve.log")
    try:
        server.wait_loaded()
        yield server
    finally:
        server.stop()


def post(server: Server, body, content_type: str | None, accept: str | None = None,
         headers: dict[str, str] | None = None) -> requests.Response:
    headers = dict(headers or {})
    if content_type is not None:
        headers["Content-Type"] = content_type
    if accept is not None:
        headers["Accept"] = accept
    return requests.post(server.url("/invocations"), data=body, headers=headers, timeout=60)


def predictions(response: requests.Response) -> tuple[list, np.ndarray]:
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/json"
    found = response.json()["predictions"]
    return [p["label"] for p in found], np.array([p["probabilities"] for p in found], dtype=np.float32)


def check_against_reference(response, reference: np.ndarray, count: int) -> None:
    labels, probabilities = predictions(response)
    assert probabilities.shape == (count, 10)
    np.testing.assert_allclose(probabilities, reference[:count], atol=1e-5)
    assert labels == reference[:count].argmax(axis=1).tolist()


def test_ping(server):
    response = requests.get(server.url("/ping"), timeout=2)
    assert response.status_code == 200


def test_model_is_accurate_through_the_server(server, digits):
    images, labels = digits
    found, _ = predictions(post(server, npy(images), "application/x-npy"))
    assert np.mean(np.array(found) == labels) > 0.9


@pytest.mark.parametrize("key", ["instances", "inputs"])
@pytest.mark.parametrize("layout", ["nested", "flat"])
@pytest.mark.parametrize("scale", ["0-255", "0-1"])
def test_json(server, digits, reference, key, layout, scale):
    images = digits[0][:8].astype(np.float64)
    if scale == "0-1":
        images = images / 255
    instances = images.tolist() if layout == "nested" else images.reshape(8, 784).tolist()
    body = json.dumps({key: instances})
    check_against_reference(post(server, body, "application/json; charset=utf-8"), reference, 8)


def test_json_single_image(server, digits, reference):
    body = json.dumps({"instances": [digits[0][0].tolist()]})
    check_against_reference(post(server, body, "application/json"), reference, 1)


def test_csv(server, digits, reference):
    body = "\n".join(",".join(map(str, image.ravel())) for image in digits[0][:20]) + "\n"
    check_against_reference(post(server, body, "text/csv"), reference, 20)


@pytest.mark.parametrize("shape", [(20, 28, 28), (20, 784), (20, 1, 28, 28)])
@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_npy(server, digits, reference, shape, dtype):
    images = digits[0][:20]
    array = images.reshape(shape) if dtype == "uint8" else (images / 255).astype(np.float32).reshape(shape)
    check_against_reference(post(server, npy(array), "application/x-npy"), reference, 20)


def test_npy_single_image(server, digits, reference):
    check_against_reference(post(server, npy(digits[0][0]), "application/x-npy"), reference, 1)


def test_jsonlines(server, digits, reference):
    body = "\n".join(json.dumps(image.tolist()) for image in digits[0][:10]) + "\n"
    check_against_reference(post(server, body, "application/jsonlines"), reference, 10)


def picture(digit: np.ndarray, fmt: str) -> bytes:
    """A photo-like picture: dark ink on light paper, 8 times MNIST's size, off centre, in colour."""
    big = np.asarray(Image.fromarray(255 - digit).resize((224, 224), Image.Resampling.BILINEAR))
    paper = np.pad(big, ((30, 90), (100, 20)), constant_values=235)
    buffer = io.BytesIO()
    Image.fromarray(np.stack([paper, paper, np.minimum(paper + 10, 255)], axis=-1)).save(buffer, fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt, content_type", [("PNG", "image/png"), ("JPEG", "image/jpeg")])
def test_pictures(server, digits, reference, fmt, content_type):
    images, labels = digits
    confident = [i for i in range(100) if reference[i].max() > 0.99 and reference[i].argmax() == labels[i]][:10]
    right = 0
    for i in confident:
        found, probabilities = predictions(post(server, picture(images[i], fmt), content_type))
        assert probabilities.shape == (1, 10)
        right += found[0] == labels[i]
    assert right >= 8, f"{right} of {len(confident)} pictures recognised"


@pytest.mark.parametrize("accept", [None, "*/*", "application/json", "application/*, text/csv;q=0.5"])
def test_accept_json(server, digits, reference, accept):
    response = post(server, npy(digits[0][:3]), "application/x-npy", accept)
    check_against_reference(response, reference, 3)


def test_accept_csv(server, digits, reference):
    response = post(server, npy(digits[0][:5]), "application/x-npy", "text/csv")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/csv")
    assert response.text == "".join(f"{label}\n" for label in reference[:5].argmax(axis=1))


def test_accept_jsonlines(server, digits, reference):
    response = post(server, npy(digits[0][:5]), "application/x-npy", "application/jsonlines")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/jsonlines"
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert [line["label"] for line in lines] == reference[:5].argmax(axis=1).tolist()
    np.testing.assert_allclose([line["probabilities"] for line in lines], reference[:5], atol=1e-5)


def error(response: requests.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    return response.json()["error"]


def test_unsupported_accept_is_406(server, digits):
    message = error(post(server, npy(digits[0][:1]), "application/x-npy", "application/xml"), 406)
    assert "text/csv" in message and "application/jsonlines" in message


@pytest.mark.parametrize("content_type", [None, "application/xml", "application/octet-stream", "text/plain"])
def test_unsupported_content_type_is_415(server, content_type):
    message = error(post(server, b"1,2,3", content_type), 415)
    for supported in ("application/json", "text/csv", "application/x-npy", "application/jsonlines",
                      "image/png", "image/jpeg"):
        assert supported in message


@pytest.mark.parametrize(
    "content_type, body, fragment",
    [
        ("application/json", b'{"instances": [[1, 2', "not valid JSON"),
        ("application/json", b'{"pixels": []}', '"instances"'),
        ("application/json", json.dumps({"instances": [[0] * 783]}).encode(), "28x28 or 784 values"),
        ("application/json", json.dumps({"instances": [[300] * 784]}).encode(), "[0, 1] or [0, 255]"),
        ("text/csv", b"1,2,3\n", "expected 784"),
        ("application/x-npy", b"\x93NUMPY garbage", "not a .npy array"),
        ("application/x-npy", npy(np.zeros((2, 27, 27), np.uint8)), "wrong shape [2, 27, 27]"),
        ("application/jsonlines", b"[0, 1\n", "line 1 is not valid JSON"),
        ("image/png", b"\x89PNG\r\n\x1a\nbroken", "not a readable PNG or JPEG"),
        ("image/jpeg", b"", "empty"),
    ],
)
def test_malformed_bodies_are_400_saying_what_to_fix(server, content_type, body, fragment):
    assert fragment in error(post(server, body, content_type), 400)


def test_payload_limit_is_6_mib_by_default(server):
    count = (6 * MIB - 128) // 784  # the largest uint8 batch that fits in 6 MiB with its .npy header
    body = npy(np.zeros((count, 28, 28), dtype=np.uint8))
    assert 6_000_000 < len(body) <= 6 * MIB  # above SageMaker's 6 MB however a MB is counted
    labels, _ = predictions(post(server, body, "application/x-npy"))
    assert len(labels) == count
    message = error(post(server, body + b"\0" * (6 * MIB + 1 - len(body)), "application/x-npy"), 413)
    assert "6 MB" in message and "SAGEMAKER_MAX_PAYLOAD_IN_MB" in message


def test_payload_limit_applies_to_chunked_bodies(server, digits, reference):
    def chunks(body: bytes, size: int = 65536):
        for start in range(0, len(body), size):
            yield body[start:start + size]

    check_against_reference(post(server, chunks(npy(digits[0][:50])), "application/x-npy"), reference, 50)
    error(post(server, chunks(b"\0" * (7 * MIB)), "application/x-npy"), 413)


def test_execution_parameters(server):
    response = requests.get(server.url("/execution-parameters"), timeout=5)
    assert response.status_code == 200
    assert response.json() == {"MaxConcurrentTransforms": 2, "BatchStrategy": "MultiRecord", "MaxPayloadInMB": 6}


def test_unknown_routes_answer_json(server):
    assert error(requests.get(server.url("/predict"), timeout=5), 404)
    assert error(requests.get(server.url("/invocations"), timeout=5), 405)


def test_custom_attributes_header_is_ignored(server, digits, reference):
    response = post(server, npy(digits[0][:2]), "application/x-npy",
                    headers={"X-Amzn-SageMaker-Custom-Attributes": "c000b4f9-df62-4c85-a0bf-7c525f9104a4"})
    check_against_reference(response, reference, 2)


def test_every_request_is_logged_with_status_and_latency(server):
    requests.get(server.url("/ping"), timeout=5)
    error(post(server, b"x", "application/xml"), 415)
    # The line is written once the answer has been sent, so it may follow the answer by a moment.
    deadline = time.monotonic() + 10
    while not (re.search(r'"GET /ping HTTP/1\.1" 200 \d+ [\d.]+s$', server.output(), re.M)
               and re.search(r'"POST /invocations HTTP/1\.1" 415 \d+ [\d.]+s$', server.output(), re.M)):
        assert time.monotonic() < deadline, server.output()[-3000:]
        time.sleep(0.01)


def test_settings_from_sagemaker_variables(start_server, tmp_path, trained_model_dir, digits, reference):
    base = tmp_path / "ml"
    shutil.copytree(trained_model_dir, base / "model")
    server = start_server(base, SAGEMAKER_MODEL_SERVER_WORKERS="1", SAGEMAKER_MAX_PAYLOAD_IN_MB="20",
                          SAGEMAKER_BATCH_STRATEGY="SINGLE_RECORD", SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT="text/csv",
                          SAGEMAKER_BATCH="true")
    server.wait_loaded()
    assert requests.get(server.url("/execution-parameters"), timeout=5).json() == {
        "MaxConcurrentTransforms": 1, "BatchStrategy": "SingleRecord", "MaxPayloadInMB": 20}
    images = np.tile(digits[0], (30, 1, 1))  # 15,000 images, 11.8 MB: above 6 MB, below 20
    response = post(server, npy(images), "application/x-npy")
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/csv")
    assert response.text.splitlines() == [str(x) for x in np.tile(reference.argmax(axis=1), 30)]
    assert len(re.findall(r"Booting worker", server.output())) == 1
