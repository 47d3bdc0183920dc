"""`container/serve` keeps a client's connection open between requests (worker.py): request after request on one
connection, closed once idle for MXNET_BYOC_KEEP_ALIVE_S, closed whenever HTTP or an unread body requires it,
spread over the workers, and closed when serve stops."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Iterator

import pytest

from devkit.servers import Server
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
        time.sleep(0.2)  # the last request arrives in two parts
        sock.sendall(last[-5:])
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


def test_a_body_left_unread_closes_and_a_refused_body_read_to_its_end_does_not(start_server, base):
    server = start_server(base)
    server.wait_loaded()
    too_large = 7 * 1024 * 1024  # over the 6 MB limit: refused, and read (drained) only to answer
    head = request("POST /invocations").replace(b"Content-Length: 0", f"Content-Length: {too_large}".encode())
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(request("POST /invocations", b"not json") + head + b"\0" * too_large
                     + request("POST /invocations", ONE_DIGIT))
        (bad, first, _), (large, second, _), (then, _, _) = read_answers(sock, 3)
        assert (bad, large, then) == (400, 413, 200)
        assert first["connection"] == second["connection"] == "keep-alive"
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head + b"\0" * 1000)
        sock.shutdown(socket.SHUT_WR)  # the body ends early: its rest can never be read
        ((status, headers, _),) = read_answers(sock, 1)
        assert status == 413 and headers["connection"] == "close"
        assert closed_by_server(sock, within=5) < 1


def test_connections_opened_one_by_one_go_to_different_workers(start_server, base):
    """A worker that holds an open connection leaves a new one to a worker that holds none (ACCEPT_DEFER_S):
    otherwise each new connection would land on either worker by chance, and this passes 1 time in 8."""
    server = start_server(base, SAGEMAKER_MODEL_SERVER_WORKERS="2")
    server.wait_loaded()
    for _ in range(3):
        with answered(server) as (first, _, _):
            holder = server.holder_of(first.getsockname()[1])
            with answered(server) as (second, _, _):
                assert server.holder_of(second.getsockname()[1]) not in (holder, None)
                ports = [first.getsockname()[1], second.getsockname()[1]]
        # The next round starts with both workers holding nothing again.
        wait_until(lambda ports=ports: all(server.holder_of(p) is None for p in ports), what="the server's closes")


# serve with a cap of two open connections per worker, the one thing changed.
CAPPED_SERVE = """
from mxnet_byoc.serve import server, worker
worker.MAX_IDLE_CONNECTIONS = 2
raise SystemExit(server.main())
"""


def test_a_worker_closes_its_longest_idle_connection_beyond_its_cap(tmp_path, base):
    server = Server(base, tmp_path / "serve.log", [sys.executable, "-c", CAPPED_SERVE],
                    SAGEMAKER_MODEL_SERVER_WORKERS="1")
    sockets: list[socket.socket] = []
    try:
        server.wait_loaded()
        sockets += [socket.create_connection(("127.0.0.1", server.port), timeout=30) for _ in range(3)]
        for sock in sockets:
            sock.sendall(request("POST /invocations", ONE_DIGIT))
            read_answers(sock, 1)
        assert closed_by_server(sockets[0], within=5) < 1
        for sock in sockets[1:]:
            sock.sendall(request("POST /invocations", ONE_DIGIT))
            assert read_answers(sock, 1)[0][0] == 200
    finally:
        for sock in sockets:
            sock.close()
        server.stop()


def test_sigterm_closes_the_idle_connections_and_serve_exits_at_once(start_server, base):
    server = start_server(base, MXNET_BYOC_KEEP_ALIVE_S="300")
    server.wait_loaded()
    with answered(server) as (sock, _, _):
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert closed_by_server(sock, within=20) < 10
    assert server.process.wait(20) == 0
    assert time.monotonic() - started < 10  # not the graceful timeout (25 s) nor the keep-alive (300 s)


def test_connections_even_out_over_the_workers_after_a_worker_restart(start_server, base):
    """After a SIGKILL the surviving worker takes every reconnection while the new one loads its model; the new
    worker's share then comes back to it (ConnectionCounts: answers of a worker over its share close)."""
    server = start_server(base, SAGEMAKER_MODEL_SERVER_WORKERS="2")
    server.wait_loaded()
    clients = [http.client.HTTPConnection("127.0.0.1", server.port, timeout=30) for _ in range(8)]

    def round_of_requests() -> None:
        for client in clients:
            try:
                client.request("POST", "/invocations", ONE_DIGIT, {"Content-Type": "application/json"})
                assert client.getresponse().read()
            except (ConnectionError, http.client.HTTPException):  # its worker was killed: a new connection
                client.close()

    def holders() -> list[int | None]:
        return sorted(server.holder_of(client.sock.getsockname()[1]) for client in clients if client.sock)

    try:
        round_of_requests()
        victim = server.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: victim not in server.worker_pids() and len(server.worker_pids()) == 2,
                   what="a new worker")
        for _ in range(100):
            round_of_requests()
        found = holders()
        assert len(found) == 8 and None not in found, found
        assert {found.count(pid) for pid in set(found)} <= {3, 4, 5} and len(set(found)) == 2, found
    finally:
        for client in clients:
            client.close()
