"""POST /invocations through the `Handler` seam (handler.py) with handlers of the tests' own, and the one
JSON error form on every path: the app's, Flask's and the worker's."""

from __future__ import annotations

import io
import json
import socket
import threading
from pathlib import Path

import pytest

from mxnet_byoc.serve import app as predictor
from mxnet_byoc.serve import codecs, error_response, http_errors, settings, worker


def config(**changes) -> settings.ServerConfig:
    return settings.ServerConfig(**{
        "host": "127.0.0.1", "port": 8080, "workers": 2, "timeout_s": 60, "max_payload_mb": 1,
        "batch_strategy": "MULTI_RECORD", "default_accept": "application/json", **changes,
    })


class Echo:
    """A handler that answers with what it was given, or raises what it is told to."""

    def __init__(self, raises: BaseException | None = None):
        self.raises = raises

    def invoke(self, body: bytes, content_type: str | None, accept: str | None,
               headers: object = None) -> tuple[bytes, str]:
        if self.raises is not None:
            raise self.raises
        return json.dumps([body.decode(), content_type, accept]).encode(), "application/x-echo"

    def __str__(self) -> str:
        return "the echo handler"


def app_with(handler: Echo, tmp_path: Path):
    app = predictor.create_app(tmp_path, config(), load=lambda model_dir: handler)
    assert app.extensions[predictor.LOADER_KEY].wait(10)
    return app


def error_of(response, status: int) -> str:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    return response.get_json()["error"]


def test_the_handlers_answer_is_the_response(tmp_path, caplog):
    caplog.set_level("INFO", logger="mxnet_byoc")
    app = app_with(Echo(), tmp_path)
    client = app.test_client()
    response = client.post("/invocations", data=b"hello", content_type="text/x-mine; a=b", headers={"Accept": "x/y"})
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/x-echo"
    assert json.loads(response.data) == ["hello", "text/x-mine; a=b", "x/y"]
    assert client.get("/ping").status_code == 200
    assert app.extensions[predictor.LOADER_KEY].wait_first_attempt(10)  # set once the load is logged
    assert any("model loaded from" in r.getMessage() and "the echo handler" in r.getMessage()
               for r in caplog.records), caplog.text


def test_a_handlers_client_error_is_its_status_and_message(tmp_path):
    client = app_with(Echo(http_errors.UnsupportedMediaType("send text/x-mine")), tmp_path).test_client()
    assert error_of(client.post("/invocations", data=b"x", content_type="a/b"), 415) == "send text/x-mine"


@pytest.mark.parametrize("fault", [ZeroDivisionError("boom"), MemoryError()])
def test_any_other_handler_exception_is_a_500_with_its_kind(tmp_path, fault, caplog):
    client = app_with(Echo(fault), tmp_path).test_client()
    with caplog.at_level("ERROR", logger="mxnet_byoc"):
        message = error_of(client.post("/invocations", data=b"x", content_type="a/b"), 500)
    assert type(fault).__name__ in message and "Traceback" not in message
    assert any(r.exc_info and r.exc_info[0] is type(fault) for r in caplog.records)


def test_a_memory_error_while_decoding_is_500_not_a_client_error(tmp_path, monkeypatch):
    # The built-in handler: running out of memory is the server's fault, never a "malformed" body.
    from mxnet_byoc.serve import digits

    class FakeModel:
        input_shape, classes, num_classes = (1, 28, 28), list(range(10)), 10

    def no_memory(body, input_shape):
        raise MemoryError

    monkeypatch.setitem(codecs._DECODERS, codecs.NPY, no_memory)
    client = app_with(digits.DigitHandler(FakeModel()), tmp_path).test_client()
    assert "MemoryError" in error_of(client.post("/invocations", data=b"x", content_type=codecs.NPY), 500)


def test_a_body_too_large_for_memory_is_413():
    class Exhausted(io.RawIOBase):
        def read(self, size=-1):
            raise MemoryError

    with pytest.raises(http_errors.PayloadTooLarge, match="the body has 1000 bytes, more than this worker can hold"):
        predictor._read_body({"wsgi.input": Exhausted(), "CONTENT_LENGTH": "1000"}, 10_000, "1 MB")


def test_ping_is_503_until_the_handler_is_built(tmp_path):
    release = threading.Event()

    def slow_load(model_dir: Path) -> Echo:
        release.wait(10)
        return Echo()

    app = predictor.create_app(tmp_path, config(), load=slow_load)
    client = app.test_client()
    assert "is loading" in error_of(client.get("/ping"), 503)
    assert "is loading" in error_of(client.post("/invocations", data=b"x", content_type="a/b"), 503)
    release.set()
    assert app.extensions[predictor.LOADER_KEY].wait(10)
    assert client.get("/ping").status_code == 200


def test_a_load_that_fails_gives_its_reason_on_ping(tmp_path):
    def broken(model_dir: Path) -> Echo:
        raise ValueError("no weights here")

    app = predictor.create_app(tmp_path, config(), load=broken)
    loader = app.extensions[predictor.LOADER_KEY]
    assert loader.wait_first_attempt(10) and loader.handler is None
    assert error_of(app.test_client().get("/ping"), 503) == "no usable model: no weights here"


def test_every_error_path_gives_the_renderers_bytes(tmp_path):
    client = app_with(Echo(http_errors.BadRequest("bad body")), tmp_path).test_client()
    cases = [
        (client.get("/nowhere"), 404),  # Flask's error handler
        (client.post("/invocations", data=b"x", content_type="a/b"), 400),  # the /invocations callable
    ]
    for response, status in cases:
        status_line, headers, body = error_response.render(status, response.get_json()["error"])
        assert response.status == status_line and response.data == body
        assert [(k, v) for k, v in response.headers.items() if k in ("Content-Type", "Content-Length")] == headers
    ours, theirs = socket.socketpair()
    with ours, theirs:  # the worker's own answer to a fault outside the app
        worker.write_json_error(ours, 500, "internal error (KeyError)")
        ours.close()
        received = theirs.recv(65536)
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, headers, expected = error_response.render(500, "internal error (KeyError)")
    assert head.decode().split("\r\n") == [f"HTTP/1.1 {status_line}", *(f"{k}: {v}" for k, v in headers)]
    assert body == expected == b'{"error":"internal error (KeyError)"}'


def test_the_mount_answers_as_a_flask_view_would(tmp_path):
    # /invocations is mounted in front of Flask's dispatch (a fast path): its answers are those of the same
    # callable served as a plain Flask view, whatever happens (an answer, client errors, 405, a fault, 503).
    from flask import Flask, Response, request

    def routed_twin(app):
        routed = Flask("routed")
        routed.add_url_rule("/invocations", "invocations", methods=["GET", "POST"],
                            view_func=lambda: Response.from_app(app.wsgi_app.handler, request.environ))
        return routed.test_client()

    cases = [("post", b"hello", "text/x-mine", {"Accept": "x/y"}), ("post", b"", None, {}),
             ("get", b"", None, {})]
    for handler in (Echo(), Echo(http_errors.BadRequest("bad body")), Echo(ZeroDivisionError("boom"))):
        app = app_with(handler, tmp_path)
        for method, body, content_type, headers in cases:
            answers = [getattr(client, method)("/invocations", data=body, content_type=content_type, headers=headers)
                       for client in (app.test_client(), routed_twin(app))]
            mounted, plain = ([a.status, a.data, sorted(a.headers.items())] for a in answers)
            assert mounted == plain
    release = threading.Event()
    app = predictor.create_app(tmp_path, config(), load=lambda model_dir: release.wait(10) and Echo())
    answers = [client.post("/invocations", data=b"x") for client in (app.test_client(), routed_twin(app))]
    release.set()
    assert answers[0].status_code == 503 and answers[0].data == answers[1].data
