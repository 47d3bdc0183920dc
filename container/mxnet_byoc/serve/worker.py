"""`serve`'s gunicorn worker: the one place where `serve` touches gunicorn's internals.

nginx (nginx.py) parses each client's request and sends it whole to a worker over a unix socket, one request per
connection, in the uwsgi protocol: nginx's own format for application servers, the request's WSGI variables
(method, path, headers, Content-Length) as length-prefixed strings, then the body. gunicorn runs the worker
processes (it forks them, replaces one that dies, kills one past SAGEMAKER_MODEL_SERVER_TIMEOUT and stops them
gracefully) and each worker accepts connections as gunicorn's sync worker does; for each connection, `handle`
here reads that request, calls the WSGI app and writes its answer, in place of gunicorn's HTTP parser and
response writer. Why: nginx has parsed the request already, and gunicorn's parsing it a second time, building the
environ and writing the answer are a large part of a one-image request's CPU (bench row "requests reach the worker
as uwsgi, not HTTP").

The app sees only WSGI; its body is a buffered reader over the socket, which reads a body whole into the bytes it
returns, without a copy in between.

Written against gunicorn GUNICORN_VERSION, which tests/unit/test_worker.py pins: it overrides the sync worker's
`handle(listener, client, addr)` and `wait(timeout)`, and uses the worker's `wsgi` (the app), `log`, `sockets`,
`PIPE` and `notify`. An upgrade of gunicorn is a deliberate act: rerun test_worker.py, then move the pin.
"""

from __future__ import annotations

import errno
import io
import os
import select
import socket
import sys
from collections.abc import Iterable
from typing import Any

from gunicorn.workers.sync import SyncWorker as GunicornSyncWorker

from . import error_response

GUNICORN_VERSION = "23.0.0"
HEADER = 4  # uwsgi's packet header: modifier1, the size of the variables (16 bits, little-endian), modifier2
BODY_BUFFER = 65536
RECEIVE = 65536  # the first read: the header and every variable fit in it (nginx's headers are at most 32 KiB)
_GONE = (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN)  # nginx has closed the connection: nothing to answer
# The parts of a WSGI environ that are the same for every request of this server.
BASE_ENVIRON = {
    "wsgi.version": (1, 0),
    "wsgi.url_scheme": "http",
    "wsgi.multithread": False,
    "wsgi.multiprocess": True,
    "wsgi.run_once": False,
    "wsgi.input_terminated": True,  # wsgi.input ends where the body does
    "SCRIPT_NAME": "",
}


class ProtocolError(ValueError):
    """What arrived is not a uwsgi request (nginx sends nothing else): the connection is closed unanswered."""


class SyncWorker(GunicornSyncWorker):
    """gunicorn's sync worker, reading uwsgi requests from nginx (see the module), and waiting for a connection
    so that a new one wakes one idle worker, not all of them.

    Why the wait: gunicorn's sync workers select() on the shared listening socket, and each new connection wakes
    every idle worker, of which all but one find nothing to accept. With nginx opening a connection per
    request, that is every request (bench row "one idle worker woken per request"). epoll's EPOLLEXCLUSIVE
    wakes one."""

    poller: select.epoll | None = None

    def wait(self, timeout: float) -> list:
        """As gunicorn's: the listeners with a connection waiting, and its wake-up pipe when a signal wrote to it."""
        self.notify()
        if self.poller is None:
            self.poller = select.epoll()
            for listener in self.sockets:
                self.poller.register(listener, select.EPOLLIN | select.EPOLLEXCLUSIVE)
            self.poller.register(self.PIPE[0], select.EPOLLIN)  # gunicorn's signal handlers write to it
        ready = {fd for fd, _ in self.poller.poll(timeout)}
        if self.PIPE[0] in ready:
            os.read(self.PIPE[0], 1)
        return [listener for listener in self.sockets if listener.fileno() in ready] + [
            fd for fd in (self.PIPE[0],) if fd in ready]

    def handle(self, listener: Any, client: socket.socket, addr: Any) -> None:
        try:
            environ = read_request(client)
            answer(client, self.wsgi, environ)
        except ProtocolError as e:
            self.log.warning("not a uwsgi request: %s", e)
        except OSError as e:
            if e.errno not in _GONE:
                self.log.exception("socket error while serving a request")
        except Exception:  # the app answers its own faults (500): this is one outside it
            self.log.exception("error while serving a request")
        finally:
            client.close()


def read_request(sock: socket.socket) -> dict[str, Any]:
    """The WSGI environ of the uwsgi request on `sock`, its body as wsgi.input."""
    data = sock.recv(RECEIVE)
    while len(data) < HEADER:
        more = sock.recv(RECEIVE)
        if not more:
            raise ProtocolError(f"the connection ended after {len(data)} bytes")
        data += more
    if data[0] != 0:
        raise ProtocolError(f"modifier1 {data[0]}: only 0 (a WSGI request) is served")
    end = HEADER + int.from_bytes(data[1:3], "little")
    while len(data) < end:
        more = sock.recv(RECEIVE)
        if not more:
            raise ProtocolError(f"the connection ended after {len(data)} of the {end} bytes of its variables")
        data += more
    environ = dict(BASE_ENVIRON)
    environ["wsgi.errors"] = sys.stderr
    position = HEADER
    try:
        while position < end:
            size = int.from_bytes(data[position:position + 2], "little")
            name = data[position + 2:position + 2 + size].decode("latin-1")
            position += 2 + size
            size = int.from_bytes(data[position:position + 2], "little")
            environ[name] = data[position + 2:position + 2 + size].decode("latin-1")
            position += 2 + size
    except IndexError:
        raise ProtocolError("a variable runs past the end of the variables") from None
    if position != end:
        raise ProtocolError("a variable runs past the end of the variables")
    length = environ.get("CONTENT_LENGTH") or "0"
    if not length.isdigit():
        raise ProtocolError(f"CONTENT_LENGTH {length!r} is not a length")
    environ["wsgi.input"] = io.BufferedReader(Body(sock, data[end:], int(length)), BODY_BUFFER)
    return environ


def answer(sock: socket.socket, app: Any, environ: dict[str, Any]) -> None:
    """Call the WSGI `app` and write its answer to `sock` as HTTP (what nginx reads back from a uwsgi server):
    the head with the first piece of the body, in one send. An exception from the app before anything was sent
    is answered 500 in the app's error form (and logged by the caller)."""
    response = _Response(sock)
    try:
        result: Iterable[bytes] = app(environ, response.start_response)
        try:
            for piece in result:
                if piece:
                    response.write(piece)
            response.finish()
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
    except Exception as e:
        if not response.sent:
            write_json_error(sock, 500, error_response.internal_error(e))
        raise


class _Response:
    """What a WSGI app's start_response and write() reach: the head waits for the first piece of the body."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.head: bytes | None = None
        self.sent = False

    def start_response(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        if exc_info and self.sent:
            raise exc_info[1].with_traceback(exc_info[2])
        self.head = _head(status, headers)
        return self.write

    def write(self, data: bytes) -> None:
        if self.head is None:
            raise AssertionError("the app wrote before calling start_response()")
        if not self.sent:
            data, self.sent = self.head + data, True
        self.sock.sendall(data)

    def finish(self) -> None:
        if not self.sent:  # no body
            self.write(b"")


def _head(status: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status}\r\n"]
    for name, value in headers:
        if "\n" in name or "\r" in name or "\n" in value or "\r" in value:  # one header can never become two
            raise ValueError(f"the header {name!r} holds a line break")
        lines.append(f"{name}: {value}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")


class Body(io.RawIOBase):
    """The request body of `length` bytes as a raw stream: first the part `received` with the request's variables,
    then the rest from `sock`, never past the body's end. wsgi.input is a BufferedReader over it, which reads a
    large body whole straight into the bytes it returns. A body that ends early reads short (the app answers 400)."""

    def __init__(self, sock: socket.socket, received: bytes, length: int):
        super().__init__()
        self._sock = sock
        self._received = memoryview(received)[:length]
        self._left = length - len(self._received)  # still to receive from the socket

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        if self._received:
            count = min(len(target), len(self._received))
            target[:count] = self._received[:count]
            self._received = self._received[count:]
            return count
        if not self._left:
            return 0
        count = self._sock.recv_into(target, min(len(target), self._left))
        self._left = 0 if count == 0 else self._left - count  # the peer closed: the body ends here
        return count


def write_json_error(sock: socket.socket, status: int, message: str) -> None:
    """An error answer in the app's form (error_response.py), for a fault outside the app."""
    status_line, headers, body = error_response.render(status, message)
    sock.sendall(_head(status_line, headers) + body)
