"""`serve`'s worker (mxnet_byoc.serve.worker): its response keeps a connection open exactly when HTTP and the
request allow it, and sends the same bytes as gunicorn's, in one send where gunicorn makes two."""

from __future__ import annotations

import email.utils
import os
import socket
from types import SimpleNamespace

import gunicorn.http.wsgi
import gunicorn.util
import gunicorn.workers.sync
import pytest
from gunicorn.config import Config
from gunicorn.http.body import Body, ChunkedReader, LengthReader
from gunicorn.http.message import Message

from mxnet_byoc.serve import settings, worker


@pytest.fixture(autouse=True)
def fixed_date_and_setting(monkeypatch) -> None:
    monkeypatch.setattr(gunicorn.util, "http_date", lambda timestamp=None: "Sun, 06 Dec 2026 22:10:41 GMT")
    monkeypatch.setattr(worker.Response, "keep_alive", False)  # whatever a test sets is undone
    monkeypatch.setattr(worker.Response, "over_share", worker.Response.__dict__["over_share"])


class FakeRequest:
    """What gunicorn's response reads of a request; `should_close` is gunicorn's own rule."""

    should_close = Message.should_close

    def __init__(self, version: tuple[int, int] = (1, 1), headers: tuple = (), body_left: int = 0,
                 chunked_done: bool | None = None):
        self.version, self.method, self.headers, self.must_close = version, "POST", list(headers), False
        if chunked_done is None:
            self.body = Body(LengthReader(None, body_left))
        else:
            reader = ChunkedReader(self, None)
            if chunked_done:
                reader.parser = None  # what ChunkedReader does once it has read the last chunk
            self.body = Body(reader)


class CountingSocket:
    """The send side of a socket pair, counting the sends that gunicorn's response makes."""

    def __init__(self, sock: socket.socket):
        self.sock, self.sends = sock, 0

    def sendall(self, data: bytes) -> None:
        self.sends += 1
        self.sock.sendall(data)


def answer(response_class: type, status: str, headers: list, parts: list[bytes], request: FakeRequest | None = None,
           sync_worker: bool = False) -> tuple[bytes, int]:
    """What a gunicorn response of `response_class` puts on the wire for one WSGI answer, and in how many sends;
    `sync_worker`: force_close first, as gunicorn's sync worker does for every request."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        sock = CountingSocket(ours)
        response = response_class(request or FakeRequest(headers=[("CONNECTION", "close")]), sock, Config())
        if sync_worker:
            response.force_close()
        write = response.start_response(status, headers)
        for part in parts:
            write(part)
        response.close()
        ours.shutdown(socket.SHUT_WR)
        received = b"".join(iter(lambda: theirs.recv(65536), b""))
    return received, sock.sends


JSON_21 = [("Content-Type", "application/json"), ("Content-Length", "21")]


@pytest.mark.parametrize("status, headers, parts, sends", [
    ("200 OK", JSON_21, [b'{"predictions":[1.0]}'], 1),
    ("415 Unsupported Media Type", [("Content-Type", "application/json"), ("Content-Length", "2")], [b"{}"], 1),
    ("200 OK", [("Content-Type", "text/csv"), ("Content-Length", "4")], [b"1\n", b"2\n"], 3),  # in parts: as before
    ("200 OK", [("Content-Type", "text/csv")], [b"1\n"], 3),  # no length: chunked, as gunicorn does it
    ("200 OK", [("Content-Length", "9")], [b"too short"[:5]], 2),  # shorter than declared: gunicorn's way
])
def test_an_answer_goes_out_in_one_send_with_the_bytes_gunicorn_sends(status, headers, parts, sends):
    gunicorns, _ = answer(gunicorn.http.wsgi.Response, status, headers, parts)
    ours, count = answer(worker.Response, status, headers, parts)
    assert ours == gunicorns
    assert count == sends


def connection_header(received: bytes) -> str:
    (value,) = (line[len(b"Connection: "):] for line in received.split(b"\r\n") if line.startswith(b"Connection: "))
    return value.decode()


@pytest.mark.parametrize("request_, headers, kept", [
    (FakeRequest(), JSON_21, True),
    (FakeRequest(), [("Content-Type", "application/json")], True),  # chunked: its end is marked
    (FakeRequest(body_left=5), JSON_21, False),  # a refused body left unread: it would come first
    (FakeRequest(chunked_done=True), JSON_21, True),
    (FakeRequest(chunked_done=False), JSON_21, False),
    (FakeRequest(version=(1, 0)), JSON_21, False),  # HTTP/1.0 closes unless asked not to
    (FakeRequest(version=(1, 0), headers=[("CONNECTION", "keep-alive")]), JSON_21, True),
    (FakeRequest(headers=[("CONNECTION", "close")]), JSON_21, False),
], ids=["length", "chunked answer", "body unread", "chunked body read", "chunked body unread", "HTTP/1.0",
        "HTTP/1.0 keep-alive", "client closes"])
def test_the_connection_is_kept_when_the_head_says_so_and_only_then(monkeypatch, request_, headers, kept):
    monkeypatch.setattr(worker.Response, "keep_alive", True)
    received, _ = answer(worker.Response, "200 OK", headers, [b'{"predictions":[1.0]}'], request_, sync_worker=True)
    assert connection_header(received) == ("keep-alive" if kept else "close")
    assert request_.keep_connection is kept


def test_with_keep_alive_off_every_answer_closes_as_gunicorns_sync_worker_does():
    request_ = FakeRequest()
    received, _ = answer(worker.Response, "200 OK", JSON_21, [b'{"predictions":[1.0]}'], request_, sync_worker=True)
    gunicorns, _ = answer(gunicorn.http.wsgi.Response, "200 OK", JSON_21, [b'{"predictions":[1.0]}'], FakeRequest(),
                          sync_worker=True)
    assert received == gunicorns and connection_header(received) == "close"
    assert request_.keep_connection is False


@pytest.mark.parametrize("keep_alive_s", [0, 5])
def test_a_worker_installs_its_response_and_error_writer_and_its_keep_alive_setting(monkeypatch, keep_alive_s):
    one = worker.SyncWorker.__new__(worker.SyncWorker)
    one.app = SimpleNamespace(config=settings.from_env({settings.KEEP_ALIVE_S: str(keep_alive_s)}),
                              connection_counts=worker.ConnectionCounts(2))
    one.slot = 1
    one.cfg = Config()
    monkeypatch.setattr(gunicorn.workers.sync.SyncWorker, "init_process", lambda self: None)
    monkeypatch.setattr(gunicorn.util, "write_error", gunicorn.util.write_error)
    monkeypatch.setattr(gunicorn.http.wsgi, "Response", gunicorn.http.wsgi.Response)
    one.init_process()
    assert gunicorn.http.wsgi.Response is worker.Response
    assert gunicorn.util.write_error is worker._write_json_error
    assert gunicorn.util.http_date is worker.http_date
    assert vars(one.cfg)["limit_request_fields"] == one.cfg.settings["limit_request_fields"].get()
    assert worker.Response.keep_alive is (keep_alive_s > 0) and one.keep_alive_s == keep_alive_s
    assert worker.Response.over_share == one.over_share
    assert list(one.counts.counts) == [worker.NOT_SERVING] * 2 and one.counts.slot == 1  # serving once it runs


def test_connection_counts_are_shared_with_forked_workers_and_name_the_fewest_elsewhere():
    counts = worker.ConnectionCounts(3)
    pid = os.fork()
    if pid == 0:  # a worker: takes slot 1, then holds 4 connections
        counts.take(1)
        counts.set(4)
        os._exit(0)
    os.waitpid(pid, 0)
    assert list(counts.counts) == [worker.NOT_SERVING, 4, worker.NOT_SERVING]
    counts.take(0)
    counts.set(2)
    assert counts.fewest_elsewhere() == 4
    counts.counts[2] = 0
    assert counts.fewest_elsewhere() == 0
    counts.take(7)  # beyond the array: not counted, and sees every serving worker
    counts.set(9)
    assert list(counts.counts) == [2, 4, 0] and counts.fewest_elsewhere() == 0


@pytest.mark.parametrize("held, others, over", [
    (5, [worker.NOT_SERVING], False),  # no other worker serves: keep them all
    (5, [4], False), (5, [3], True), (2, [0, 9], True), (1, [0], False),
])
def test_a_worker_sheds_connections_only_when_it_holds_two_more_than_another(held, others, over):
    one = worker.SyncWorker.__new__(worker.SyncWorker)
    one.counts, one.held = worker.ConnectionCounts(1 + len(others)), held
    one.counts.take(0)
    for slot, count in enumerate(others, 1):
        one.counts.counts[slot] = count
    assert one.over_share() is over


def test_the_share_is_asked_once_per_answer_so_the_head_and_the_worker_agree(monkeypatch):
    answers = iter([False, True, True])  # another worker's count changes while the head is written
    monkeypatch.setattr(worker.Response, "keep_alive", True)
    monkeypatch.setattr(worker.Response, "over_share", staticmethod(lambda: next(answers)))
    request_ = FakeRequest()
    received, _ = answer(worker.Response, "200 OK", JSON_21, [b'{"predictions":[1.0]}'], request_, sync_worker=True)
    assert connection_header(received) == "keep-alive" and request_.keep_connection is True


def test_an_answer_of_a_worker_over_its_share_closes_its_connection(monkeypatch):
    monkeypatch.setattr(worker.Response, "keep_alive", True)
    monkeypatch.setattr(worker.Response, "over_share", staticmethod(lambda: True))
    request_ = FakeRequest()
    received, _ = answer(worker.Response, "200 OK", JSON_21, [b'{"predictions":[1.0]}'], request_, sync_worker=True)
    assert connection_header(received) == "close" and request_.keep_connection is False


def test_a_stopping_worker_tells_the_clients_of_answers_in_flight_that_it_closes(monkeypatch):
    monkeypatch.setattr(worker.Response, "keep_alive", True)
    one = worker.SyncWorker.__new__(worker.SyncWorker)
    monkeypatch.setattr(gunicorn.workers.sync.SyncWorker, "handle_exit", lambda self, sig, frame: None)
    one.handle_exit(15, None)
    request_ = FakeRequest()
    received, _ = answer(worker.Response, "200 OK", JSON_21, [b'{"predictions":[1.0]}'], request_, sync_worker=True)
    assert connection_header(received) == "close"


def test_the_date_header_is_gunicorns_text_formatted_once_a_second(monkeypatch):
    formatted, format_date = [], email.utils.formatdate

    def formatdate(timestamp: float, usegmt: bool) -> str:
        formatted.append(timestamp)
        return format_date(timestamp, usegmt=usegmt)

    clock = iter([1796595041.01, 1796595041.5, 1796595041.99, 1796595042.0, 1796595042.7])
    monkeypatch.setattr(worker.time, "time", lambda: next(clock))
    monkeypatch.setattr(worker, "_date_second", -1)
    monkeypatch.setattr(worker.email.utils, "formatdate", formatdate)
    dates = [worker.http_date() for _ in range(5)]
    assert dates == ["Sun, 06 Dec 2026 22:10:41 GMT"] * 3 + ["Sun, 06 Dec 2026 22:10:42 GMT"] * 2
    assert len(formatted) == 2
    assert worker.http_date(1796595041.5) == "Sun, 06 Dec 2026 22:10:41 GMT"  # gunicorn's timestamp argument


def test_settings_become_attributes_and_a_request_is_parsed_without_config_getattr(monkeypatch):
    cfg = Config()
    cfg.set("limit_request_fields", 7)
    worker.settings_as_attributes(cfg)
    looked_up = []
    lookup = Config.__getattr__
    monkeypatch.setattr(Config, "__getattr__", lambda self, name: looked_up.append(name) or lookup(self, name))
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Content-Length: 2\r\n\r\n{}")
        request = next(gunicorn.http.RequestParser(cfg, ours, ("127.0.0.1", 1)))
        response, environ = gunicorn.http.wsgi.create(request, ours, ("127.0.0.1", 1), ("127.0.0.1", 8080), cfg)
    assert looked_up == []
    assert environ["PATH_INFO"] == "/invocations" and environ["CONTENT_LENGTH"] == "2"
    assert cfg.limit_request_fields == 7 and not cfg.is_ssl
    plain = [name for name in cfg.settings if not isinstance(getattr(Config, name, None), property)]
    assert all(getattr(cfg, name) == cfg.settings[name].get() for name in plain)
