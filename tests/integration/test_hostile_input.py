"""Hand-made hostile requests against the real server (nginx in front of gunicorn's 2 workers, a model from
`container/train`): each gets a 4xx with a JSON error, within the server's timeouts, and the server stays healthy
afterwards (every test ends by checking /ping, a real prediction, the same workers, and a log without 5xx or
tracebacks). Raw sockets where an HTTP client would fix the request up.

A client that stops sending in the middle of its request (it stalls, or closes its side) is not answered: nginx
closes the connection, at once or after the read timeout, and no worker ever sees the request."""

from __future__ import annotations

import io
import json
import pickle
import re
import shutil
import socket
import struct
import threading
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from devkit.bodies import npy
from devkit.servers import Server
from devkit.waiting import wait_until

WORKERS = 2
TIMEOUT_S = 6  # SAGEMAKER_MODEL_SERVER_TIMEOUT: gunicorn kills a worker silent for this long
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory, trained_model_dir) -> Server:
    base = tmp_path_factory.mktemp("hostile")
    shutil.copytree(trained_model_dir, base / "model")
    server = Server(base, base / "serve.log", SAGEMAKER_MODEL_SERVER_WORKERS=str(WORKERS),
                    SAGEMAKER_MODEL_SERVER_TIMEOUT=str(TIMEOUT_S))
    try:
        server.wait_loaded()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def valid_body(digits) -> bytes:
    return json.dumps({"instances": [digits[0][0].tolist()]}).encode()


@pytest.fixture(autouse=True)
def stays_healthy(request, valid_body):
    """After each test: /ping 200, a correct answer, no worker replaced, no 5xx and no traceback logged."""
    if "server" not in request.fixturenames:
        yield
        return
    server = request.getfixturevalue("server")
    yield
    assert requests.get(server.url("/ping"), timeout=2).status_code == 200
    response = requests.post(server.url("/invocations"), data=valid_body,
                             headers={"Content-Type": "application/json"}, timeout=10)
    assert response.status_code == 200 and len(response.json()["predictions"]) == 1
    log = server.output()
    assert server.process.poll() is None
    assert len(re.findall(r"Booting worker with pid", log)) == WORKERS, f"a worker was replaced:\n{log[-3000:]}"
    assert "WORKER TIMEOUT" not in log and "Traceback" not in log, log[-3000:]
    # 501 and 505 are HTTP's answers to a transfer coding or an HTTP version the server does not implement.
    assert not re.search(r'" 5(?!01|05)\d\d \d+ [\d.]+s$', log, re.M), "a request got a 5xx"


def post(server: Server, body: bytes, content_type: str | None, timeout: float = 30) -> requests.Response:
    headers = {"Content-Type": content_type} if content_type else {}
    return requests.post(server.url("/invocations"), data=body, headers=headers, timeout=timeout)


def client_error(response: requests.Response, status: int = 400) -> str:
    """The JSON error message of a response that must have `status`."""
    assert response.status_code == status, f"{response.status_code}: {response.text[:500]}"
    assert response.headers["Content-Type"] == "application/json"
    document = response.json()
    assert set(document) == {"error"} and document["error"], document
    return document["error"]


def npy_with_header(header: str, data: bytes, version: int = 1) -> bytes:
    """A .npy file (format 1.0, or 3.0: UTF-8 header, 4-byte length) with a hand-written header dictionary."""
    text = header.encode("utf-8")
    prefix = 10 if version == 1 else 12
    text += b" " * (-(prefix + len(text) + 1) % 64) + b"\n"
    length = struct.pack("<H", len(text)) if version == 1 else struct.pack("<I", len(text))
    return b"\x93NUMPY" + bytes([version, 0]) + length + text + data


def png_bomb(width: int, height: int, bit_depth: int) -> bytes:
    """A greyscale PNG of `width` x `height` black pixels: tiny on the wire, huge once decoded."""
    row = b"\0" * (1 + (width * bit_depth + 7) // 8)  # filter byte + packed pixels
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def jpeg_bomb(width: int, height: int) -> bytes:
    """A small valid JPEG whose frame header claims `width` x `height`."""
    buffer = io.BytesIO()
    Image.new("L", (16, 16)).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def pixels(values: str, count: int = 784) -> bytes:
    return ",".join([values] * count).encode()


def deep(levels: int) -> bytes:
    return b'{"instances": ' + b"[" * levels + b"0" + b"]" * levels + b"}"


ONE_IMAGE = np.zeros((1, 28, 28), dtype=np.float32)


def with_value(value: float) -> np.ndarray:
    image = ONE_IMAGE.copy()
    image[0, 5, 5] = value
    return image


# (case, content type, body builder, fragment of the error message); bodies are built when a test runs.
HOSTILE_BODIES = [
    ("100k levels of [", "application/json", lambda: b"[" * 100_000, "not valid JSON"),
    ("100k nested levels, balanced", "application/json", lambda: deep(100_000), "too deep"),
    ("100k levels of [ in jsonlines", "application/jsonlines", lambda: b"[" * 100_000, "not valid JSON"),
    ("100k levels of [ in csv", "text/csv", lambda: b"[" * 100_000, "expected 784"),
    ("10^6 numbers as the list of images", "application/json",
     lambda: json.dumps({"instances": [0] * 1_000_000}).encode(), "not a list of pixel values"),
    ("one image of 10^6 numbers", "application/json",
     lambda: json.dumps({"instances": [[0] * 1_000_000]}).encode(), "holds 1000000 values"),
    ("10^6 one-pixel images", "application/json",
     lambda: json.dumps({"instances": [[0]] * 1_000_000}).encode(), "holds 1 values"),
    ("a jsonlines line of 10^6 numbers", "application/jsonlines",
     lambda: json.dumps([0] * 1_000_000).encode(), "holds 1000000 values"),
    ("a csv line of 10^6 numbers", "text/csv", lambda: pixels("0", 1_000_000), "holds 1000000 values"),
    ("an npy of 10^6 numbers", "application/x-npy", lambda: npy(np.zeros(1_000_000, np.float32)), "wrong shape"),
    ("NaN in json", "application/json", lambda: b'{"instances": [[' + pixels("NaN") + b"]]}", "not valid JSON"),
    ("Infinity in json", "application/json", lambda: b'{"instances": [[' + pixels("Infinity") + b"]]}",
     "not valid JSON"),
    ("-Infinity in json", "application/json", lambda: b'{"instances": [[' + pixels("-Infinity") + b"]]}",
     "not valid JSON"),
    ("1e400 in json", "application/json", lambda: b'{"instances": [[' + pixels("1e400") + b"]]}", "not valid JSON"),
    ("NaN in jsonlines", "application/jsonlines", lambda: b"[" + pixels("NaN") + b"]", "not valid JSON"),
    ("nan in csv", "text/csv", lambda: pixels("nan"), "[0, 1] or [0, 255]"),
    ("inf in csv", "text/csv", lambda: pixels("inf"), "[0, 1] or [0, 255]"),
    ("1e40 in csv (inf as float32)", "text/csv", lambda: pixels("1e40"), "[0, 1] or [0, 255]"),
    ("NaN in npy", "application/x-npy", lambda: npy(with_value(np.nan)), "[0, 1] or [0, 255]"),
    ("inf in npy", "application/x-npy", lambda: npy(with_value(np.inf)), "[0, 1] or [0, 255]"),
    ("-inf in npy", "application/x-npy", lambda: npy(with_value(-np.inf)), "[0, 1] or [0, 255]"),
    ("2**62 in int64 npy", "application/x-npy", lambda: npy(np.full((1, 28, 28), 2**62, np.int64)),
     "[0, 1] or [0, 255]"),
    ("strings in json", "application/json", lambda: json.dumps({"instances": [["7"] * 784]}).encode(),
     "other than numbers"),
    ("booleans in json", "application/json", lambda: json.dumps({"instances": [[True] * 784]}).encode(),
     "other than numbers"),
    ("nulls in json", "application/json", lambda: json.dumps({"instances": [[None] * 784]}).encode(),
     "other than numbers"),
    ("objects in json", "application/json", lambda: json.dumps({"instances": [[{}] * 784]}).encode(),
     "other than numbers"),
    ("instances a string", "application/json", lambda: b'{"instances": "0,0,0"}', '"instances"'),
    ("a bare list in json", "application/json", lambda: json.dumps([[0] * 784]).encode(), '"instances"'),
    ("words in csv", "text/csv", lambda: pixels("x"), "not a number"),
    ("empty csv fields", "text/csv", lambda: b"," * 783, "not a number"),
    ("csv not UTF-8", "text/csv", lambda: b"\xff\xfe" * 400, "not UTF-8"),
    ("json not UTF-8", "application/json", lambda: b'{"instances": "\xff"}', "not valid JSON"),
    ("complex npy", "application/x-npy", lambda: npy(ONE_IMAGE.astype(np.complex64)), "not numeric"),
    ("bool npy", "application/x-npy", lambda: npy(ONE_IMAGE.astype(bool)), "not numeric"),
    ("unicode npy", "application/x-npy", lambda: npy(ONE_IMAGE.astype("U3")), "not numeric"),
    ("bytes npy", "application/x-npy", lambda: npy(ONE_IMAGE.astype("S3")), "not numeric"),
    ("structured npy", "application/x-npy", lambda: npy(np.zeros((1, 28, 28), [("a", "f4")])), "not numeric"),
    ("datetime npy", "application/x-npy", lambda: npy(ONE_IMAGE.astype("M8[s]")), "not numeric"),
    ("npy cut in its data", "application/x-npy", lambda: npy(np.zeros((10, 28, 28), np.uint8))[:4000],
     "not a .npy array"),
    ("npy cut in its header", "application/x-npy", lambda: npy(ONE_IMAGE)[:20], "not a .npy array"),
    ("npy header declaring 292 GiB", "application/x-npy",
     lambda: npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (100000000, 28, 28), }", b"\0" * 64),
     "not a .npy array"),
    ("npy 3.0 header declaring 292 GiB", "application/x-npy",
     lambda: npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (100000000, 28, 28), }", b"\0" * 64,
                             version=3),
     "not a .npy array"),
    ("npy header declaring a 2 GB element", "application/x-npy",
     lambda: npy_with_header("{'descr': '|V2000000000', 'fortran_order': False, 'shape': (1,), }", b"\0" * 64),
     "not a .npy array"),
    ("npy header with a dtype of size 0", "application/x-npy",
     lambda: npy_with_header("{'descr': '0f8', 'fortran_order': False, 'shape': (1, 28, 28), }", b"\0" * 64),
     "not a .npy array"),
    ("npy header with True as a dimension", "application/x-npy",
     lambda: npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (784, True), }", b"\0" * 3136),
     "not a .npy array"),
    ("npy header with a negative shape", "application/x-npy",
     lambda: npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (-1, 28, 28), }", b"\0" * 3136),
     "not a .npy array"),
    ("npy header cut mid-token", "application/x-npy",
     lambda: npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 28", b""), "not a .npy array"),
    ("npy header that is code", "application/x-npy", lambda: npy_with_header("__import__('os')", b""),
     "not a .npy array"),
    ("broken zip as npy", "application/x-npy", lambda: b"PK\x03\x04" + b"\0" * 100, "application/x-npy body"),
    ("PNG bomb 30000x30000 (1-bit, 109 KB)", "image/png", lambda: png_bomb(30_000, 30_000, 1), "decompression bomb"),
    ("PNG bomb 10000x10000 (8-bit, 98 KB)", "image/png", lambda: png_bomb(10_000, 10_000, 8), "decompression bomb"),
    ("PNG 7000x7000 (49 Mpx, above the 40 Mpx limit)", "image/png", lambda: png_bomb(7_000, 7_000, 8),
     "40000000 pixels"),
    ("JPEG claiming 65000x65000", "image/jpeg", lambda: jpeg_bomb(65_000, 65_000), "decompression bomb"),
    ("PNG cut short", "image/png", lambda: png_bomb(64, 64, 8)[:40], "not a readable PNG or JPEG"),
    ("GIF as PNG", "image/png", lambda: b"GIF89a" + b"\0" * 64, "not a readable PNG or JPEG"),
]
for content_type in ("application/json", "application/jsonlines", "text/csv", "application/x-npy", "image/png",
                     "image/jpeg"):
    HOSTILE_BODIES.append((f"empty {content_type}", content_type, lambda: b"", "empty"))


@pytest.mark.parametrize("content_type, build, fragment",
                         [case[1:] for case in HOSTILE_BODIES], ids=[case[0] for case in HOSTILE_BODIES])
def test_hostile_body_gets_400_with_a_json_reason(server, content_type, build, fragment):
    message = client_error(post(server, build(), content_type))
    assert fragment in message


def test_empty_body_without_content_type_is_415(server):
    client_error(post(server, b"", None), 415)


class Trap:
    """Unpickling it creates the file `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickled_npy_is_never_unpickled(server, tmp_path):
    marker = tmp_path / "unpickled"
    pickle.loads(pickle.dumps(Trap(marker)))  # the trap works: unpickling it does create the file
    assert marker.exists()
    marker.unlink()
    array = np.zeros((1, 28, 28), dtype=object)
    array[0, 0, 0] = Trap(marker)
    assert "pickl" in client_error(post(server, npy(array, allow_pickle=True), "application/x-npy")).lower()
    assert not marker.exists()


def raw_request(server: Server, data: bytes, shut_write: bool = False, wait: float = 30) -> tuple[int | None, bytes]:
    """Sends `data` as it is on a fresh connection; (status, body) of the final answer (after any `100 Continue`),
    or (None, b"") when the server closed the connection without one."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=wait) as sock:
        sock.sendall(data)
        if shut_write:
            sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    while received.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"):
        received = received[len(b"HTTP/1.1 100 Continue\r\n\r\n"):]
    if not received:
        return None, b""
    head, _, body = received.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), head
    return int(head.split()[1]), body


def head(content_length: str | int, content_type: str = "application/json", extra: str = "") -> bytes:
    # Connection: close, so that raw_request's read ends with the answer (serve keeps connections open).
    return (f"POST /invocations HTTP/1.1\r\nHost: localhost\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {content_length}\r\nConnection: close\r\n{extra}\r\n").encode()


def test_content_length_shorter_than_the_body(server, valid_body):
    status, body = raw_request(server, head(len(valid_body) - 10) + valid_body)
    assert status == 400 and b"not valid JSON" in body


def test_content_length_longer_than_the_body_then_end_of_stream(server, valid_body):
    # nginx ends a request whose client closed its side before the whole body came (RFC 9112 section 8: the
    # server may answer an incomplete request): closed at once, logged as 400, and no worker saw it.
    assert raw_request(server, head(len(valid_body) + 10) + valid_body, shut_write=True) == (None, b"")
    wait_until(lambda: re.search(r'"POST /invocations HTTP/1.1" 400 0 ', server.output()), what="the 400 logged")


def test_content_length_longer_than_the_body_then_silence(server, valid_body):
    # Closed after the read timeout (3 s here), unanswered; it never held a worker.
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head(len(valid_body) + 10) + valid_body)
        assert sock.recv(65536) == b""
    wait_until(lambda: re.search(r'"POST /invocations HTTP/1.1" 408 0 ', server.output()), what="the 408 logged")


@pytest.mark.parametrize("content_length, extra", [("abc", ""), ("-5", ""), ("5", "Content-Length: 7\r\n"),
                                                   ("5", "Transfer-Encoding: chunked\r\n")],
                         ids=["not a number", "negative", "given twice", "with chunked encoding"])
def test_invalid_content_length_is_400_in_json(server, valid_body, content_length, extra):
    status, body = raw_request(server, head(content_length, extra=extra) + valid_body)
    assert status == 400 and set(json.loads(body)) == {"error"}


CHUNKED = (b"POST /invocations HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
           b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")


@pytest.mark.parametrize("body", [b"zz\r\nabc\r\n0\r\n\r\n", b"-1\r\nabc\r\n0\r\n\r\n", b"3\r\nhello\r\n0\r\n\r\n",
                                  b"2\r\n{}\r\n0\r\n\r\n0\r\n", b"5\r\nhello\r\n0\r\nBad Trailer\r\n\r\n"],
                         ids=["invalid chunk size", "negative chunk size", "chunk missing its terminator",
                              "bytes after the last chunk", "bad trailer"])
def test_a_malformed_chunked_body_is_400_in_json(server, body):
    # nginx discards trailers (RFC 9112 section 7.1.2 lets a recipient): the last case is the body's 400.
    status, answer = raw_request(server, CHUNKED + body)
    assert status == 400 and json.loads(answer)["error"]


def test_a_chunked_body_cut_short_by_the_client_is_closed_unanswered(server):
    assert raw_request(server, CHUNKED + b"a00\r\n" + b"x" * 100, shut_write=True) == (None, b"")


def test_expect_100_continue_is_answered_by_nginx(server, valid_body):
    expect = CHUNKED.replace(b"Connection: close", b"Expect: 100-continue\r\nConnection: close")
    data = expect + b"%x\r\n" % len(valid_body) + valid_body + b"\r\n0\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(expect)
        assert sock.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(data[len(expect):])
        received = b"".join(iter(lambda: sock.recv(65536), b""))
    assert received.startswith(b"HTTP/1.1 200 OK") and b'"predictions"' in received
    # Over the limit by its Content-Length: 413 at once (before the read timeout, 3 s here), never 100 Continue.
    assert answer_at_once(server, head(7 * MIB, extra="Expect: 100-continue\r\n")).startswith(b"HTTP/1.1 413")
    # A client that half-closes after its head gets 100 Continue, then the close: nginx reads no body.
    assert raw_request(server, expect, shut_write=True) == (None, b"")


@pytest.mark.parametrize("data, status, fragment", [
    (b"POST /invocations HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
     b"Connection: close\r\n\r\n{}", 400, b"Host"),
    (b"POST /invocations HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n", 400, b"Host"),
    (b"POST /invocations HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nConnection: close\r\n\r\n", 501,
     b"Transfer-Encoding"),
    (b"POST /invocations HTTP/2.0\r\nHost: a\r\nConnection: close\r\n\r\n", 505, b"HTTP/1.1"),
    (b"GET /" + b"x" * 9000 + b" HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", 414, b"8 KiB"),
    (b"GET /ping HTTP/1.1\r\nHost: a\r\nX-Big: " + b"x" * 9000 + b"\r\nConnection: close\r\n\r\n", 431,
     b"8 KiB"),
    (b"GET /ping HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"x" * 4000) for i in range(9))
     + b"Connection: close\r\n\r\n", 431, b"32 KiB"),
    (b"TRACE /ping HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", 405, b"method"),
    (b"NOT HTTP AT ALL\r\n\r\n", 400, b"HTTP/1.1"),
], ids=["HTTP/1.1 without Host", "two Hosts", "unsupported transfer coding", "HTTP/2.0 request line",
        "request line over 8 KiB", "header line over 8 KiB", "headers over 32 KiB", "TRACE", "not HTTP"])
def test_a_malformed_request_gets_nginxs_answer_in_json(server, data, status, fragment):
    found, body = raw_request(server, data)
    assert found == status and fragment in json.loads(body)["error"].encode()


@pytest.mark.parametrize("path, allowed", [("/ping", "GET, HEAD, OPTIONS"), ("/invocations?x=1", "POST"),
                                           ("/elsewhere", None)])
def test_trace_is_405_with_the_paths_methods(server, path, allowed):
    response = requests.request("TRACE", server.url(path), timeout=10)
    assert response.status_code == 405 and response.headers.get("Allow") == allowed


def answered_while_held(sock: socket.socket, request: Callable[[], int]) -> tuple[bytes, list[int]]:
    """All that `sock` receives until the server closes it, and the statuses of `request()`, sent again and
    again meanwhile, that came back before that close."""
    held = threading.Event()
    held.set()
    statuses: list[int] = []

    def others() -> None:
        while held.is_set():
            status = request()
            if held.is_set():
                statuses.append(status)

    thread = threading.Thread(target=others)
    thread.start()
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    finally:
        held.clear()
        thread.join()
    return received, statuses


def test_slow_bodies_hold_no_worker_and_are_dropped(server, valid_body):
    """More stalled clients than there are workers: the others are served all along (nginx, not a worker, waits
    for a body), and each stalled one is closed after the read timeout."""
    def other() -> int:
        return requests.post(server.url("/invocations"), data=valid_body,
                             headers={"Content-Type": "application/json"}, timeout=5).status_code

    stalled = [socket.create_connection(("127.0.0.1", server.port), timeout=30) for _ in range(2 * WORKERS)]
    try:
        for sock in stalled:
            sock.sendall(head(len(valid_body)) + valid_body[:10])  # a few bytes, then nothing
        received, answered = answered_while_held(stalled[0], other)
        assert received == b"" and all(sock.recv(65536) == b"" for sock in stalled[1:])
    finally:
        for sock in stalled:
            sock.close()
    assert answered and set(answered) == {200}


def test_slow_headers_are_dropped_while_other_requests_are_served(start_server, tmp_path, trained_model_dir):
    # A server of its own: gunicorn logs the dropped connection as a socket error with a traceback.
    base = tmp_path / "ml"
    shutil.copytree(trained_model_dir, base / "model")
    other = start_server(base, SAGEMAKER_MODEL_SERVER_WORKERS=str(WORKERS),
                         SAGEMAKER_MODEL_SERVER_TIMEOUT=str(TIMEOUT_S))
    other.wait_loaded()
    with socket.create_connection(("127.0.0.1", other.port), timeout=30) as sock:
        sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: localhost\r\nContent-Ty")  # and nothing more
        received, pings = answered_while_held(sock, lambda: requests.get(other.url("/ping"), timeout=5).status_code)
    assert received == b""  # closed without an answer: there is no request to answer
    assert pings and set(pings) == {200}
    assert requests.get(other.url("/ping"), timeout=2).status_code == 200
    log = other.output()
    assert len(re.findall(r"Booting worker with pid", log)) == WORKERS and "WORKER TIMEOUT" not in log


def answer_at_once(server: Server, data: bytes) -> bytes:
    """What the server sends for `data` within 2 s, before the read timeout (3 s here) could be the cause."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=2) as sock:
        sock.sendall(data)
        return sock.recv(65536)


def test_body_over_the_limit_is_413_before_it_is_read(server):
    # No byte of the body is sent, and the client waits for the answer.
    answer = answer_at_once(server, head(6 * MIB + 1, "application/x-npy"))
    assert answer.startswith(b"HTTP/1.1 413") and b"6 MB (SAGEMAKER_MAX_PAYLOAD_IN_MB)" in answer
    oversize = 6 * MIB + 1
    status, body = raw_request(server, head(oversize, "application/x-npy") + b"\0" * oversize)
    assert status == 413


def test_chunked_body_over_the_limit_is_413(server):
    chunk = b"\0" * MIB
    data = (b"POST /invocations HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-npy\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
    data += b"".join(b"%x\r\n" % len(chunk) + chunk + b"\r\n" for _ in range(7)) + b"0\r\n\r\n"
    status, body = raw_request(server, data)
    assert status == 413 and b"larger than the limit" in body
