"""`container/serve`'s client connections, which nginx owns: request after request on one connection, closed once
idle for MXNET_BYOC_KEEP_ALIVE_S and whenever HTTP requires it, closed when serve stops; and a worker that dies
(SIGKILL, or gunicorn's own timeout) loses only the request it was serving, whatever waits on kept-open
connections behind it."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devkit.script_models import copy_aws_model, write_script
from devkit.waiting import wait_until

ONE_DIGIT = json.dumps({"instances": [[0] * 783 + [255]]}).encode()


@pytest.fixture
def base(tmp_path, trained_model_dir):
    shutil.copytree(trained_model_dir, tmp_path / "ml" / "model")
    return tmp_path / "ml"


def request(method: str, body: bytes = b"", *extra: str) -> bytes:
    lines = [f"{method} HTTP/1.1", "Host: localhost", "Content-Type: application/json", f"Content-Length: {len(body)}",
             *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def read_answers(sock: socket.socket, count: int) -> list[tuple[int, dict[str, str], bytes]]:
    """`count` HTTP answers off `sock`, each read to the end of its Content-Length, and nothing more."""
    answers, pending = [], b""
    while len(answers) < count:
        while b"\r\n\r\n" not in pending:
            pending += recv_some(sock)
        head, _, pending = pending.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {name.lower(): value for name, _, value in (line.partition(": ") for line in lines)}
        length = int(headers["content-length"])
        while len(pending) < length:
            pending += recv_some(sock)
        answers.append((int(status_line.split()[1]), headers, pending[:length]))
        pending = pending[length:]
    assert pending == b""
    return answers


def recv_some(sock: socket.socket) -> bytes:
    data = sock.recv(65536)
    assert data, "the server closed the connection"
    return data


@contextlib.contextmanager
def answered(server, data: bytes | None = None) -> Iterator[tuple[socket.socket, int, dict[str, str]]]:
    """A connection to `server` on which `data` (by default one one-image POST) has been answered: the socket,
    the answer's status and headers."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(data or request("POST /invocations", ONE_DIGIT))
        ((status, headers, _),) = read_answers(sock, 1)
        yield sock, status, headers


def closed_by_server(sock: socket.socket, within: float) -> float:
    """Seconds until the server closes `sock` (recv returns b''), at most `within`."""
    started = time.monotonic()
    sock.settimeout(within)
    assert sock.recv(1) == b""
    return time.monotonic() - started


def test_one_connection_serves_request_after_request_then_closes_when_idle(start_server, base):
    server = start_server(base, MXNET_BYOC_KEEP_ALIVE_S="1")
    server.wait_loaded()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    labels, ports = [], set()
    for method, path, body in [("POST", "/invocations", ONE_DIGIT), ("GET", "/ping", None),
                               ("POST", "/invocations", ONE_DIGIT), ("GET", "/execution-parameters", None)]:
        connection.request(method, path, body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        answer = json.loads(response.read())
        assert response.status == 200 and response.getheader("Connection") == "keep-alive"
        ports.add(connection.sock.getsockname()[1])
        if path == "/invocations":
            labels.append(answer["predictions"][0]["label"])
    assert len(ports) == 1 and len(set(labels)) == 1
    assert 0.5 < closed_by_server(connection.sock, within=10) < 5  # idle for 1 s, then closed
    connection.close()


def test_keep_alive_0_closes_every_connection_after_its_answer(start_server, base):
    server = start_server(base, MXNET_BYOC_KEEP_ALIVE_S="0")
    server.wait_loaded()
    with answered(server) as (sock, status, headers):
        assert status == 200 and headers["connection"] == "close"
        assert closed_by_server(sock, within=5) < 1


def test_pipelined_requests_are_each_answered_in_order(start_server, base):
    server = start_server(base)
    server.wait_loaded()
    last = request("POST /invocations", ONE_DIGIT)
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(request("POST /invocations", ONE_DIGIT) + request("GET /ping") + last[:-5])
        sock.sendall(last[-5:])  # the last request arrives in two parts
        answers = read_answers(sock, 3)
    assert [status for status, _, _ in answers] == [200, 200, 200]
    assert json.loads(answers[1][2]) == {"status": "healthy"} and answers[0][2] == answers[2][2]
    assert all(headers["connection"] == "keep-alive" for _, headers, _ in answers)


def test_http_1_0_and_connection_close_get_their_answer_then_the_close(start_server, base):
    server = start_server(base)
    server.wait_loaded()
    for data in [request("POST /invocations", ONE_DIGIT).replace(b"HTTP/1.1", b"HTTP/1.0", 1),
                 request("POST /invocations", ONE_DIGIT, "Connection: close")]:
        with answered(server, data) as (sock, status, headers):
            assert status == 200 and headers["connection"] == "close"
            assert closed_by_server(sock, within=5) < 1


def test_a_refused_body_keeps_the_connection_and_one_refused_unread_closes_it(start_server, base):
    server = start_server(base)
    server.wait_loaded()
    too_large = 7 * 1024 * 1024  # over the 6 MB limit: refused by its Content-Length, before it is read
    head = request("POST /invocations").replace(b"Content-Length: 0", f"Content-Length: {too_large}".encode())
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(request("POST /invocations", b"not json") + request("POST /invocations", ONE_DIGIT))
        (bad, first, _), (then, _, _) = read_answers(sock, 2)
        assert (bad, then) == (400, 200) and first["connection"] == "keep-alive"
        sock.sendall(head)
        ((status, headers, body),) = read_answers(sock, 1)
        assert status == 413 and headers["connection"] == "close" and b"6 MB" in body


def test_sigterm_closes_the_idle_connections_and_serve_exits_at_once(start_server, base):
    server = start_server(base, MXNET_BYOC_KEEP_ALIVE_S="300")
    server.wait_loaded()
    with answered(server) as (sock, _, _):
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert closed_by_server(sock, within=20) < 10
    assert server.process.wait(20) == 0
    assert time.monotonic() - started < 10  # not the graceful timeout (25 s) nor the keep-alive (300 s)


# A handler that holds each request until the file `release` appears beside the model: a worker busy for as long
# as a test needs. It notes each request it starts, by its body, so that the test knows who holds what.
HOLDING_SCRIPT = """
    import os
    import time


    def model_fn(model_dir):
        return os.path.dirname(model_dir)


    def transform_fn(folder, body, content_type, accept):
        name = body.decode() if isinstance(body, bytes) else str(body)
        with open(os.path.join(folder, "started-" + name.strip('"')), "w") as f:
            f.write(str(os.getpid()))
        while not os.path.exists(os.path.join(folder, "release")):
            time.sleep(0.01)
        return {"pid": os.getpid(), "body": name}
"""
WAITING = 8  # requests on kept-open connections behind the one the worker serves


@pytest.fixture
def holding(start_server, tmp_path):
    """`serve` with one worker and HOLDING_SCRIPT, and nine kept-open connections that have each had an answer."""

    def start(**env: str):
        base = tmp_path / "held"
        write_script(copy_aws_model(base / "model") / "code", HOLDING_SCRIPT)
        server = start_server(base, SAGEMAKER_PROGRAM="inference.py", SAGEMAKER_MODEL_SERVER_WORKERS="1", **env)
        server.wait_loaded()
        (base / "release").touch()
        clients = [http.client.HTTPConnection("127.0.0.1", server.port, timeout=60) for _ in range(WAITING + 1)]
        for number, client in enumerate(clients):
            client.request("POST", "/invocations", json.dumps(f"warm-{number}"), {"Content-Type": "application/json"})
            response = client.getresponse()
            assert response.status == 200 and response.getheader("Connection") == "keep-alive", response.read()
            response.read()
        (base / "release").unlink()
        return server, base, clients

    return start


def waiting_for_a_worker(server) -> int:
    """Requests that nginx has handed to gunicorn and no worker has accepted yet: the queue of gunicorn's socket."""
    path = re.search(r"Listening at: unix:(\S+) ", server.output()).group(1)
    listed = subprocess.run(["ss", "-xlnH", "src", path], capture_output=True, text=True, check=True).stdout.split()
    return int(listed[2])


def hold_one_and_queue_the_rest(server, base: Path, clients: list) -> int:
    """The first client's request held by the worker, every other client's waiting for a worker; the worker's pid."""
    clients[0].request("POST", "/invocations", '"held"', {"Content-Type": "application/json"})
    holder = int(wait_until(lambda: (base / "started-held").exists() and (base / "started-held").read_text(),
                            what="the worker holding the first request"))
    for number, client in enumerate(clients[1:]):
        client.request("POST", "/invocations", json.dumps(f"queued-{number}"), {"Content-Type": "application/json"})
    wait_until(lambda: waiting_for_a_worker(server) == WAITING, what=f"{WAITING} requests queued for a worker")
    return holder


def answers_after_release(base: Path, clients: list) -> list[tuple[int, dict]]:
    (base / "release").touch()
    found = []
    for client in clients:
        response = client.getresponse()
        found.append((response.status, json.loads(response.read())))
    return found


def test_a_killed_worker_loses_only_the_request_it_was_serving(holding):
    server, base, clients = holding()
    holder = hold_one_and_queue_the_rest(server, base, clients)
    assert server.worker_pids() == [holder]
    os.kill(holder, signal.SIGKILL)
    response = clients[0].getresponse()
    assert response.status == 502 and "the worker serving this request died" in json.loads(response.read())["error"]
    answers = answers_after_release(base, clients[1:])
    assert [status for status, _ in answers] == [200] * WAITING
    (replacement,) = server.worker_pids()
    assert {answer["pid"] for _, answer in answers} == {replacement} != {holder}
    assert [answer["body"] for _, answer in answers] == [f'"queued-{n}"' for n in range(WAITING)]


def test_a_request_past_the_timeout_loses_only_itself(holding):
    """gunicorn kills a worker silent for SAGEMAKER_MODEL_SERVER_TIMEOUT; nginx waits twice as long, so the
    requests queued behind the stuck one are answered by the worker that replaces it."""
    server, base, clients = holding(SAGEMAKER_MODEL_SERVER_TIMEOUT="6")
    holder = hold_one_and_queue_the_rest(server, base, clients)
    response = clients[0].getresponse()
    assert response.status == 502 and "SAGEMAKER_MODEL_SERVER_TIMEOUT" in json.loads(response.read())["error"]
    assert f"WORKER TIMEOUT (pid:{holder})" in server.output()
    answers = answers_after_release(base, clients[1:])
    assert [status for status, _ in answers] == [200] * WAITING
