"""Reading request bodies: from whatever WSGI input stream the server gives (serve's worker, gunicorn's own, a
test client), with the payload limit, and a clear 400 for a body the server cannot read."""

from __future__ import annotations

import io
import json
import os
import socket
import struct
import threading

import pytest
from gunicorn.http.errors import ChunkMissingTerminator, InvalidChunkSize, NoMoreData

from mxnet_byoc.serve import app as predictor
from mxnet_byoc.serve import http_errors, settings, worker

LIMIT = 8 * 1024 * 1024


def read(stream, length: int | None) -> bytes:
    environ = {"wsgi.input": stream}
    if length is not None:
        environ["CONTENT_LENGTH"] = str(length)
    return predictor._read_body(environ, LIMIT, "8 MB")


def test_a_body_is_read_whole_from_any_stream():
    assert read(io.BytesIO(b"0123456789"), 10) == b"0123456789"


def test_a_body_that_ends_early_is_400():
    with pytest.raises(http_errors.BadRequest, match="ended after 7 of its 100 bytes"):
        read(io.BytesIO(b"abcdefg"), 100)


def test_declared_length_above_the_limit_is_refused_before_reading():
    class Untouchable(io.RawIOBase):
        def read(self, size=-1):
            raise AssertionError("the body was read")

    with pytest.raises(http_errors.PayloadTooLarge, match=f"the body has {LIMIT + 1} bytes; the limit is 8 MB"):
        read(Untouchable(), LIMIT + 1)


def test_a_body_without_a_length_is_counted_as_it_arrives():
    with pytest.raises(http_errors.PayloadTooLarge, match="larger than the limit of 8 MB"):
        read(io.BytesIO(b"x" * (LIMIT + 1)), None)
    assert len(read(io.BytesIO(b"x" * LIMIT), None)) == LIMIT


def uwsgi_stream(ours: socket.socket, theirs: socket.socket, body: bytes) -> tuple[io.BufferedReader, threading.Thread]:
    """serve's wsgi.input on `ours`: the worker's stream over a uwsgi request carrying `body`, sent from `theirs`."""
    length = str(len(body)).encode()
    variables = struct.pack("<H", 14) + b"CONTENT_LENGTH" + struct.pack("<H", len(length)) + length
    sender = threading.Thread(target=theirs.sendall, args=(struct.pack("<BHB", 0, len(variables), 0) + variables
                                                           + body,))
    sender.start()
    return worker.read_request(ours)["wsgi.input"], sender


@pytest.mark.parametrize("length", [0, 1, 1500, 3_136_128])
def test_serves_stream_gives_the_app_the_body_it_was_sent(length):
    body = os.urandom(length)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        stream, sender = uwsgi_stream(ours, theirs, body)
        assert read(stream, length) == body
        sender.join()


class Broken(io.RawIOBase):
    """An input stream that fails as gunicorn's own does on a malformed chunked body."""

    def __init__(self, error: BaseException):
        self.error = error

    def read(self, size=-1):
        raise self.error


class Loaded:
    handler = object()
    reason = ""


@pytest.mark.parametrize("error", [InvalidChunkSize(b"zz"), ChunkMissingTerminator(b"lo"), NoMoreData(b"abc"),
                                   ConnectionResetError(104, "Connection reset by peer")])
def test_a_body_the_server_cannot_read_is_400_without_a_traceback(error, caplog):
    """`gunicorn 'predictor:create_app()'` serves chunked bodies with gunicorn's reader, whose errors on a malformed
    chunk are OSErrors: the client's mistake, answered 400 with the reason."""
    invocations = predictor.Invocations(Loaded(), settings.from_env({}))
    answered = []
    body = invocations({"REQUEST_METHOD": "POST", "wsgi.input": Broken(error)},
                       lambda status, headers: answered.append(status))
    assert answered == ["400 Bad Request"]
    assert json.loads(b"".join(body))["error"].startswith("the body could not be read: ")
    assert not caplog.records


def test_a_stream_that_times_out_is_408():
    invocations = predictor.Invocations(Loaded(), settings.from_env({"SAGEMAKER_MODEL_SERVER_TIMEOUT": "8"}))
    answered = []
    body = invocations({"REQUEST_METHOD": "POST", "CONTENT_LENGTH": "10", "wsgi.input": Broken(TimeoutError())},
                       lambda status, headers: answered.append(status))
    assert answered == ["408 Request Timeout"]
    assert json.loads(b"".join(body)) == {"error": "the body stalled: nothing arrived for 4 s"}
