"""`serve`'s worker (mxnet_byoc.serve.worker): it reads the uwsgi requests nginx sends, hands the WSGI app an
environ and a body stream, writes the app's answer as HTTP, and wakes one idle worker per connection. It was
written against one gunicorn version, pinned here."""

from __future__ import annotations

import io
import os
import re
import select
import socket
import struct
import threading
from pathlib import Path
from types import SimpleNamespace

import gunicorn
import pytest

from devkit.project import ROOT
from devkit.waiting import wait_until
from mxnet_byoc.serve import worker


def packet(variables: dict[str, str], body: bytes = b"", modifier1: int = 0) -> bytes:
    """A uwsgi request as nginx's uwsgi module writes it."""
    encoded = b"".join(struct.pack("<H", len(k)) + k.encode("latin-1") + struct.pack("<H", len(v))
                       + v.encode("latin-1") for k, v in variables.items())
    return struct.pack("<BHB", modifier1, len(encoded), 0) + encoded + body


POST = {"REQUEST_METHOD": "POST", "REQUEST_URI": "/invocations?x=1", "PATH_INFO": "/invocations",
        "QUERY_STRING": "x=1", "CONTENT_TYPE": "application/json", "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_NAME": "localhost", "SERVER_PORT": "8080", "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "51000",
        "HTTP_ACCEPT": "application/json", "HTTP_X_AMZN_SAGEMAKER_CUSTOM_ATTRIBUTES": "a=b"}


def pinned(path: Path) -> str:
    (version,) = re.findall(r"^gunicorn==([\w.]+)", path.read_text(), re.M)
    return version


def test_the_worker_is_pinned_to_the_gunicorn_it_was_written_against():
    """An upgrade of gunicorn is deliberate: the images' pins, the venv's gunicorn and the worker's move together."""
    docker = ROOT / "docker"
    pins = {pinned(docker / name) for name in ("requirements.txt", "requirements-cpu.lock", "requirements-gpu.lock")}
    assert pins == {worker.GUNICORN_VERSION} == {gunicorn.__version__}


def received(data: bytes, pieces: int = 1) -> dict:
    """read_request's environ for `data` arriving in `pieces` sends, with the body read to its end."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        size = -(-len(data) // pieces)

        def send() -> None:
            for start in range(0, len(data), size):
                theirs.sendall(data[start:start + size])
            theirs.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        environ = worker.read_request(ours)
        environ["body"] = environ["wsgi.input"].read()
        sender.join()
    return environ


@pytest.mark.parametrize("pieces", [1, 3, 40])
def test_a_request_becomes_a_wsgi_environ_with_its_body(pieces):
    body = bytes(range(256)) * 40
    environ = received(packet({**POST, "CONTENT_LENGTH": str(len(body))}, body), pieces)
    assert {k: environ[k] for k in POST} == POST
    assert environ["body"] == body and environ["CONTENT_LENGTH"] == str(len(body))
    assert environ["wsgi.version"] == (1, 0) and environ["wsgi.url_scheme"] == "http"
    assert environ["wsgi.multiprocess"] and not environ["wsgi.multithread"] and not environ["wsgi.run_once"]
    assert environ["wsgi.input_terminated"] and environ["SCRIPT_NAME"] == "" and environ["wsgi.errors"]


def test_a_request_without_a_body_reads_empty():
    environ = received(packet({"REQUEST_METHOD": "GET", "PATH_INFO": "/ping", "CONTENT_LENGTH": ""}))
    assert environ["body"] == b""


def test_variables_are_latin_1_strings_as_pep_3333_asks():
    environ = received(packet({"PATH_INFO": "/caf\u00e9".encode().decode("latin-1"), "CONTENT_LENGTH": "0"}))
    assert environ["PATH_INFO"].encode("latin-1").decode() == "/caf\u00e9"


def test_a_large_body_is_read_whole_and_nothing_past_its_end():
    body = bytes(range(256)) * 12_000  # 3 MB
    ours, theirs = socket.socketpair()
    with ours, theirs:
        sender = threading.Thread(target=theirs.sendall,
                                  args=(packet({**POST, "CONTENT_LENGTH": str(len(body))}, body) + b"AFTER",))
        sender.start()
        stream = worker.read_request(ours)["wsgi.input"]
        assert stream.read(len(body)) == body and stream.read(10) == b""
        sender.join()
        assert ours.recv(100) == b"AFTER"


def test_a_body_that_ends_early_reads_short():
    environ = received(packet({**POST, "CONTENT_LENGTH": "100"}, b"only 12 byte"))
    assert environ["body"] == b"only 12 byte"


@pytest.mark.parametrize("data, message", [
    (b"\x00\x10", "ended after 2 bytes"),
    (packet(POST)[:30], "ended after 30 of"),
    (packet(POST, modifier1=5), "modifier1 5"),
    (struct.pack("<BHB", 0, 3, 0) + b"\x09\x00A", "runs past the end"),
    (packet({"CONTENT_LENGTH": "-5"}), "not a length"),
])
def test_anything_but_a_uwsgi_request_is_refused(data, message):
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(data)
        theirs.shutdown(socket.SHUT_WR)
        with pytest.raises(worker.ProtocolError, match=message):
            worker.read_request(ours)


class CountingSocket:
    def __init__(self):
        self.sends: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.sends.append(bytes(data))


def app_answering(status: str, headers: list, parts: list[bytes], closed: list | None = None):
    class Result(list):
        def close(self) -> None:
            if closed is not None:
                closed.append(True)

    def app(environ, start_response):
        start_response(status, headers)
        return Result(parts)

    return app


def test_an_answer_is_its_head_and_first_piece_in_one_send_then_the_rest():
    sock, closed = CountingSocket(), []
    worker.answer(sock, app_answering("200 OK", [("Content-Type", "text/csv")], [b"", b"1\n", b"2\n"], closed), {})
    assert sock.sends == [b"HTTP/1.1 200 OK\r\nContent-Type: text/csv\r\n\r\n1\n", b"2\n"]
    assert closed == [True]


def test_an_answer_without_a_body_is_its_head():
    sock = CountingSocket()
    worker.answer(sock, app_answering("204 No Content", [], []), {})
    assert sock.sends == [b"HTTP/1.1 204 No Content\r\n\r\n"]


def json_error(sent: bytes) -> tuple[int, str]:
    head, _, body = sent.partition(b"\r\n\r\n")
    assert b"Content-Type: application/json" in head
    return int(head.split()[1]), body.decode()


@pytest.mark.parametrize("app", [
    lambda environ, start_response: 1 / 0,
    app_answering("200 OK", [("X-Injected", "a\r\nSet-Cookie: b")], [b"x"]),
], ids=["the app raises", "a header with a line break"])
def test_a_fault_before_the_answer_is_a_500_in_the_apps_form(app):
    sock = CountingSocket()
    with pytest.raises((ZeroDivisionError, ValueError)):
        worker.answer(sock, app, {})
    (sent,) = sock.sends
    status, body = json_error(sent)
    assert status == 500 and "internal error" in body


def test_a_fault_after_the_head_went_out_sends_nothing_more():
    def app(environ, start_response):
        start_response("200 OK", [])
        yield b"first"
        raise RuntimeError("mid-answer")

    sock = CountingSocket()
    with pytest.raises(RuntimeError):
        worker.answer(sock, app, {})
    assert sock.sends == [b"HTTP/1.1 200 OK\r\n\r\nfirst"]


def a_worker(app=None) -> tuple[worker.SyncWorker, list]:
    """A worker object without gunicorn's process around it: its app and a log that keeps what it is told."""
    one = worker.SyncWorker.__new__(worker.SyncWorker)
    logged: list = []
    one.wsgi = app
    one.log = SimpleNamespace(warning=lambda *a: logged.append(("warning", a[0] % a[1:])),
                              exception=lambda *a: logged.append(("exception", a[0])))
    return one, logged


def served(one: worker.SyncWorker, data: bytes) -> bytes:
    ours, theirs = socket.socketpair()
    with theirs:
        theirs.sendall(data)
        one.handle(None, ours, None)
        assert ours.fileno() == -1  # handle closes the connection, whatever happened
        return b"".join(iter(lambda: theirs.recv(65536), b""))


def test_handle_answers_a_request_and_closes_the_connection():
    def app(environ, start_response):
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body[::-1]]

    one, logged = a_worker(app)
    answer = served(one, packet({**POST, "CONTENT_LENGTH": "3"}, b"abc"))
    assert answer == b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ncba"
    assert logged == []


def test_handle_closes_unanswered_what_is_not_a_uwsgi_request():
    one, logged = a_worker()
    assert served(one, b"GET / HTTP/1.1\r\n\r\n") == b""
    assert logged == [("warning", "not a uwsgi request: modifier1 71: only 0 (a WSGI request) is served")]


def test_handle_logs_a_fault_outside_the_app_and_answers_500():
    one, logged = a_worker(lambda environ, start_response: {}["missing"])
    status, body = json_error(served(one, packet(POST)))
    assert status == 500 and "KeyError" in body
    assert logged == [("exception", "error while serving a request")]


def test_handle_ignores_a_peer_that_has_gone():
    ours, theirs = socket.socketpair()
    theirs.sendall(packet(POST))

    def app(environ, start_response):  # nginx gave up on the request while the app worked
        theirs.close()
        start_response("200 OK", [])
        return [b"x" * 1_000_000]

    one, logged = a_worker(app)
    one.handle(None, ours, None)
    assert logged == [] and ours.fileno() == -1


def test_a_new_connection_wakes_one_idle_worker_of_two():
    """Two workers wait on one listening socket; a connection wakes one of them, the other sleeps on to its
    timeout (gunicorn's own wait wakes both)."""
    pipes = [socket.socketpair() for _ in range(2)]
    path = Path(f"/tmp/worker-wait-{os.getpid()}.sock")
    path.unlink(missing_ok=True)
    workers, woken, tids = [], [], []
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        listener.listen()
        listener.setblocking(False)
        for _, wake_read in pipes:
            one, _ = a_worker()
            one.sockets, one.PIPE, one.notify = [listener], [wake_read.fileno(), None], lambda: None
            workers.append(one)

        def wait(one: worker.SyncWorker) -> None:
            tids.append(threading.get_native_id())
            woken.append(one.wait(1))

        threads = [threading.Thread(target=wait, args=(one,)) for one in workers]
        for thread in threads:
            thread.start()
        try:
            wait_until(lambda: len(tids) == 2 and all(asleep(tid) for tid in tids), what="both workers asleep")
            with socket.socket(socket.AF_UNIX) as client:
                client.connect(str(path))
                for thread in threads:
                    thread.join()
        finally:
            path.unlink()
            for one in workers:
                if one.poller is not None:
                    one.poller.close()
            for pair in pipes:
                for end in pair:
                    end.close()
    assert sorted(woken, key=len) == [[], [listener]]


def asleep(tid: int) -> bool:
    """Whether thread `tid` of this process sleeps in a system call (its state in /proc is S)."""
    return Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "S"


def test_a_signal_wakes_a_waiting_worker_through_gunicorns_pipe():
    wake_write, wake_read = socket.socketpair()
    with socket.socket() as listener, wake_write, wake_read:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        one, _ = a_worker()
        one.sockets, one.PIPE, one.notify = [listener], [wake_read.fileno(), None], lambda: None
        wake_write.send(b".")
        try:
            assert one.wait(5) == [wake_read.fileno()]
            assert select.select([wake_read], [], [], 0)[0] == []  # the byte was read
        finally:
            one.poller.close()


def test_the_error_answer_is_the_renderers():
    sock = CountingSocket()
    worker.write_json_error(sock, 400, "bad")
    assert sock.sends == [b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n"
                          b'{"error":"bad"}']


def test_the_body_is_a_buffered_stream():
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(packet({**POST, "CONTENT_LENGTH": "11"}, b"line 1\nline"))
        stream = worker.read_request(ours)["wsgi.input"]
        assert isinstance(stream, io.BufferedReader)
        assert stream.readline() == b"line 1\n" and list(stream) == [b"line"]
