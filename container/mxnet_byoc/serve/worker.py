"""`serve`'s gunicorn worker: one request at a time, like gunicorn's sync worker, but the connection stays open
for the client's next request (HTTP keep-alive) until it has been idle for MXNET_BYOC_KEEP_ALIVE_S seconds.

Why: gunicorn's sync worker closes every connection after one answer, so every request also pays a TCP
connect, an accept and a close on both ends. For a one-image request that is a quarter of the server's CPU:
kept open, a one-image request costs 363 us of server CPU against 461 (bench/fastpath_bench.py, 2026-12-07),
and the mlp runs at 0.85-1.01 of the plain endpoint's requests/s against 0.67-0.77 (bench/serve_bench.py).
AWS's reference container keeps its clients' connections open for 5 s too (nginx's keepalive_timeout 5 in
front of gunicorn).

The price, in a worker that serves one request at a time: a connection belongs to the worker that accepted
it, so a request on it waits while that worker serves another, even when a second worker is free. So the
workers keep their connections even (ConnectionCounts: each worker's count, in memory shared by all): a worker
that holds more connections than another leaves a new connection to it (it waits ACCEPT_DEFER_S before it
accepts), and one that holds more than one connection above another answers with `Connection: close`, so
that the client reconnects to the other. Without that, one worker held 28-31 of wrk's 32 connections after a
worker restart (bench/load_bench.py). MXNET_BYOC_KEEP_ALIVE_S=0 gives gunicorn's behaviour back: one request
per connection.
"""

from __future__ import annotations

import email.utils
import errno
import mmap
import os
import selectors
import socket
import time
from collections.abc import Callable
from typing import Any

import gunicorn.http.wsgi
import gunicorn.util
from gunicorn import http
from gunicorn.http.body import ChunkedReader, LengthReader
from gunicorn.workers.sync import SyncWorker as GunicornSyncWorker

from . import error_response

ACCEPT_DEFER_S = 0.005  # how long a worker leaves a new connection to one that holds fewer
NOT_SERVING = -1  # a worker's count while it loads its model, and after it has stopped
MAX_IDLE_CONNECTIONS = 256  # per worker: beyond it the longest idle one is closed (clients that never close)
_GONE = (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN)  # the client went away: nothing to log


class Response(gunicorn.http.wsgi.Response):
    """gunicorn's response, which keeps the connection open when HTTP allows it and the request's body has
    been read to its end, and which sends the head and the body in one send when the app hands over one
    body of the length it declared (every answer of this app): the same bytes, in one send instead of two.

    Why one send: one wake-up of the client instead of two. With the worker's leaner accept, a one-image
    request cost 23 us less server CPU, 4% of its 580 (median of 12 paired rounds under wrk at concurrency 8
    on two cores, which ranged from -35 to +42: bench/fastpath_bench.py); in one process with a core to
    itself the second send costs 1-2.5 us."""

    keep_alive = False  # each worker sets it from its settings, and clears it when it begins to stop
    over_share: Callable[[], bool] = staticmethod(lambda: False)  # the worker's (SyncWorker.over_share)
    shed: bool | None = None  # this answer's over_share(), once asked

    def force_close(self) -> None:
        # gunicorn's sync worker calls this for every request, to close every connection.
        if not self.keep_alive:
            super().force_close()

    def should_close(self) -> bool:
        # An unread rest of the body would come first on the connection: the next request could not be read.
        return super().should_close() or not _body_read(self.req) or self._over_share()

    def _over_share(self) -> bool:
        # Asked once per answer: the other workers' counts may change between the two calls of default_headers.
        if self.shed is None:
            self.shed = self.over_share()
        return self.shed

    def default_headers(self) -> list[str]:
        # The worker keeps the connection exactly when the head tells the client it may.
        self.req.keep_connection = not self.upgrade and not self.should_close()
        return super().default_headers()

    def write(self, arg: bytes) -> None:
        if self.headers_sent or self.chunked or not isinstance(arg, bytes) or self.response_length != len(arg):
            return super().write(arg)
        head = "".join([*self.default_headers(), *(f"{name}: {value}\r\n" for name, value in self.headers), "\r\n"])
        self.headers_sent = True
        self.sent = len(arg)
        gunicorn.util.write(self.sock, head.encode("latin-1") + arg)


def _body_read(request: Any) -> bool:
    reader = request.body.reader
    if isinstance(reader, LengthReader):
        return reader.length == 0
    if isinstance(reader, ChunkedReader):
        return reader.parser is None  # its last chunk has been read
    return False


class ConnectionCounts:
    """How many open connections each worker holds, one int per worker slot (server._assign_slot), in memory
    that the master maps before it forks its workers (anonymous mmap: shared); NOT_SERVING for a slot whose
    worker loads its model or has stopped."""

    def __init__(self, workers: int):
        self.counts = memoryview(mmap.mmap(-1, 4 * workers)).cast("i")
        for slot in range(workers):
            self.counts[slot] = NOT_SERVING
        self.slot: int | None = None  # this worker's, once it has taken one

    def take(self, slot: int) -> None:
        """In a worker: count for `slot` from now on (a slot beyond the array is not counted)."""
        self.slot = slot if 0 <= slot < len(self.counts) else None
        self.set(NOT_SERVING)

    def set(self, held: int) -> None:
        if self.slot is not None:
            self.counts[self.slot] = held

    def fewest_elsewhere(self) -> int | None:
        """The fewest connections another serving worker holds; None when no other worker serves."""
        others = [held for slot, held in enumerate(self.counts) if slot != self.slot and held >= 0]
        return min(others, default=None)


class Connection:
    """A client's connection and gunicorn's parser of its requests, which holds what was read past the last one."""

    __slots__ = ("sock", "addr", "listener", "parser", "idle_since", "watched")

    def __init__(self, sock: socket.socket, addr: Any, listener: Any, cfg: Any):
        self.sock, self.addr, self.listener = sock, addr, listener
        self.parser = http.RequestParser(cfg, sock, addr)
        self.idle_since = 0.0
        self.watched = False  # registered with the worker's selector (from its first kept answer to its close)

    def has_buffered_request(self) -> bool:
        """Bytes of a next request already read off the socket (a client that pipelines): the socket may never
        become readable again for them."""
        return self.parser.unreader.buf.seek(0, os.SEEK_END) > 0


_LISTENER, _WAKE_UP = "listener", "wake-up"


class SyncWorker(GunicornSyncWorker):
    """gunicorn's sync worker with open connections kept between requests (see the module's doc), a read
    timeout on every connection, JSON for gunicorn's own errors, each answer sent in one piece, and two costs
    of gunicorn's per request cut (its settings read as attributes, its Date header made once a second).

    gunicorn's own reads have no timeout: a client that stalls in its headers or its body would hold the
    worker until the master kills it for not reporting in (a 500 and a worker restart). With it, a stall in
    the headers closes the connection, and one in the body gets 408 from the app."""

    def init_process(self) -> None:
        # gunicorn answers requests it cannot parse (a bad Content-Length) through util.write_error, dates
        # each answer with util.http_date, and builds each request's Response from wsgi.Response; all three
        # are looked up when used.
        gunicorn.util.write_error = _write_json_error
        gunicorn.util.http_date = http_date
        gunicorn.http.wsgi.Response = Response
        self.keep_alive_s = self.app.config.keep_alive_s
        Response.keep_alive = self.keep_alive_s > 0
        Response.over_share = self.over_share
        self.held = 0  # open connections, the one being served included
        self.counts: ConnectionCounts = self.app.connection_counts
        self.counts.take(getattr(self, "slot", 0))
        settings_as_attributes(self.cfg)
        super().init_process()

    def handle_exit(self, sig: int, frame: Any) -> None:
        Response.keep_alive = False  # answers still in flight tell their clients that the connection closes
        super().handle_exit(sig, frame)

    def run(self) -> None:
        self.selector = selectors.DefaultSelector()
        for listener in self.sockets:
            listener.setblocking(False)
            self.selector.register(listener, selectors.EVENT_READ, _LISTENER)
        self.selector.register(self.PIPE[0], selectors.EVENT_READ, _WAKE_UP)  # gunicorn's signals wake it
        self.idle: dict[Connection, None] = {}  # open connections between requests, the longest idle first
        self.deferred: dict[Any, float] = {}  # listeners with a connection left to other workers, until when
        self.counts.set(self.held)
        try:
            while self.alive:
                self.notify()
                ready = self.wait_for_work()
                if len(ready) > 1:  # connections first: one its client has closed no longer counts against accepting
                    ready.sort(key=lambda event: event[0].data is _LISTENER)
                for key, _ in ready:
                    self._on_ready(key)
                now = time.monotonic()
                self._accept_deferred(now)
                self._close_expired(now)
                if not self.is_parent_alive():
                    return
        finally:
            for connection in list(self.idle):
                self._close(connection)
            self.counts.set(NOT_SERVING)

    def over_share(self) -> bool:
        """Whether this worker holds more than one connection above another serving worker: then the answer
        closes its connection, and the client's reconnection goes to the other."""
        fewest = self.counts.fewest_elsewhere()
        return fewest is not None and self.held > fewest + 1

    def wait_for_work(self) -> list:
        """The listeners and connections ready to read; no longer than until the next thing falls due, and
        never longer than gunicorn's heartbeat interval (self.timeout)."""
        now = time.monotonic()
        wait = self.timeout
        if self.idle:
            wait = min(wait, next(iter(self.idle)).idle_since + self.keep_alive_s - now)
        for until in self.deferred.values():
            wait = min(wait, until - now)
        return self.selector.select(max(wait, 0))

    def _on_ready(self, key: selectors.SelectorKey) -> None:
        if key.data is _WAKE_UP:
            os.read(self.PIPE[0], 1)
        elif key.data is _LISTENER:
            fewest = self.counts.fewest_elsewhere()
            if fewest is not None and fewest < self.held:  # left to a worker that holds fewer, if it takes it
                self.selector.unregister(key.fileobj)
                self.deferred[key.fileobj] = time.monotonic() + ACCEPT_DEFER_S
            else:
                self._accept(key.fileobj)
        elif key.data in self.idle:  # (not when closed for MAX_IDLE_CONNECTIONS since the select)
            # It stays registered while served: the selector is only asked again once it is idle, and two
            # epoll_ctl calls per request are saved.
            del self.idle[key.data]
            self._serve(key.data)

    def _accept_deferred(self, now: float) -> None:
        for listener, until in list(self.deferred.items()):
            if until <= now:
                del self.deferred[listener]
                self.selector.register(listener, selectors.EVENT_READ, _LISTENER)
                self._accept(listener)

    def _accept(self, listener: Any) -> None:
        try:
            client, addr = listener.accept()
        except OSError as e:  # another worker took it, or the client has gone
            if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.ECONNABORTED):
                return
            raise
        # gunicorn's accept also calls setblocking(1), which the read timeout replaces at once, and
        # close_on_exec, which Python's accept() has already done (PEP 446).
        client.settimeout(self.app.config.read_timeout_s)
        self.held += 1
        self.counts.set(self.held)
        self._serve(Connection(client, addr, listener, self.cfg))

    def _serve(self, connection: Connection) -> None:
        """Answer the connection's next request (and any it has pipelined), then keep it or close it."""
        while self._serve_one(connection):
            if connection.has_buffered_request():
                self.notify()  # a client pipelining many requests must not make the worker look hung
            else:
                connection.idle_since = time.monotonic()
                self.idle[connection] = None
                if not connection.watched:
                    self.selector.register(connection.sock, selectors.EVENT_READ, connection)
                    connection.watched = True
                if len(self.idle) > MAX_IDLE_CONNECTIONS:
                    self._close(next(iter(self.idle)))
                return
        self._close(connection)

    def _serve_one(self, connection: Connection) -> bool:
        """One request, as gunicorn's sync worker handles it; True when the connection stays open."""
        request = None
        try:
            request = next(connection.parser)
            self.handle_request(connection.listener, request, connection.sock, connection.addr)
            return self.alive and getattr(request, "keep_connection", False)
        except (StopIteration, http.errors.NoMoreData):  # the client closed the connection, or HTTP ends it
            return False
        except OSError as e:
            if e.errno not in _GONE:
                self.log.exception("Socket error processing request.")
            return False
        except BaseException as e:
            self.handle_error(request, connection.sock, connection.addr, e)
            return False

    def _close_expired(self, now: float) -> None:
        while self.idle:
            oldest = next(iter(self.idle))
            if oldest.idle_since + self.keep_alive_s > now:
                return
            self._close(oldest)

    def _close(self, connection: Connection) -> None:
        if connection.watched:
            self.selector.unregister(connection.sock)
        self.idle.pop(connection, None)
        gunicorn.util.close(connection.sock)
        self.held -= 1
        self.counts.set(self.held)


def settings_as_attributes(cfg: Any) -> None:
    """Each of gunicorn's settings also as a plain attribute of `cfg`, with its current value.

    Why: gunicorn reads its settings through Config.__getattr__, 20 times per request (the parser's limits,
    the forwarding rules, the hooks), 1.2 us each against 0.06 for an attribute: parsing a request and
    building its environ cost 40.7 us of CPU instead of 66.6 (bench/fastpath_bench.py). A worker's settings
    no longer change once it has forked (a reload starts new workers)."""
    vars(cfg).update({name: setting.get() for name, setting in cfg.settings.items()})


_date_second, _date_text = -1, ""


def http_date(timestamp: float | None = None) -> str:
    """gunicorn's util.http_date (the Date header's text), formatted once a second instead of once per answer.

    Why: email.utils.formatdate costs 5.0 us of CPU per answer, the cached text 0.3 (bench/fastpath_bench.py);
    under wrk it was 3.8% of a worker's samples for one-image cnn requests. The header's resolution is one
    second, so the text is the same."""
    global _date_second, _date_text
    if timestamp is not None:
        return email.utils.formatdate(timestamp, usegmt=True)
    now = int(time.time())
    if now != _date_second:
        _date_second, _date_text = now, email.utils.formatdate(now, usegmt=True)
    return _date_text


def _write_json_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's own answers (a request it cannot parse; an error outside the app) in the app's error form."""
    status_line, headers, body = error_response.render(status_int, mesg or reason, [("Connection", "close")], reason)
    head = "".join([f"HTTP/1.1 {status_line}\r\n", *(f"{k}: {v}\r\n" for k, v in headers), "\r\n"])
    gunicorn.util.write_nonblock(sock, head.encode("latin-1") + body)
