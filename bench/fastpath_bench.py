#!/usr/bin/env python3
"""Serving's fast paths against the plain code they replace, in this process: CPU microseconds per call.

Each fast path in mxnet_byoc.serve says in one line why it is there, with the gain printed here; a test pins
its output to the plain path's (named in the last column). A fast path whose gain no longer matters against
the request it serves is removed rather than kept. CPU time (thread_time), best of --repeat runs, so that
other load on the machine moves the figures little; `uptime` is printed with them. The last two rows are the
exception: the worker's fast paths only show in whole requests, so they run three `serve` processes under wrk
and compare their server CPU per request.
Usage: .venv/bin/python bench/fastpath_bench.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import timeit
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import gunicorn.http
import gunicorn.http.wsgi
import gunicorn.util
import numpy as np
import orjson
from flask import Flask, Response, request
from gunicorn import glogging
from gunicorn.config import Config
from gunicorn.http.body import Body, LengthReader
from gunicorn.http.unreader import SocketUnreader
from werkzeug.test import EnvironBuilder

from devkit.servers import Server
from mxnet_byoc.serve import allocator, codecs, digits, server, settings, worker
from mxnet_byoc.serve import app as serving
from serving import rig

REPEAT = 7


def cpu_us(call: Callable[[], object], number: int) -> float:
    return min(timeit.repeat(call, number=number, repeat=REPEAT, timer=time.thread_time)) / number * 1e6


def row(name: str, plain: float, fast: float, where: str, test: str, gain: float | None = None) -> None:
    gain = plain - fast if gain is None else gain
    print(f"  {name:44} {plain:>9.1f} {fast:>9.1f} {gain:>9.1f}  {where:34} {test}")


class Constant:
    """A handler that costs nothing, so that only the dispatch around it is measured."""

    def invoke(self, body: bytes, content_type: str | None, accept: str | None) -> tuple[bytes, str]:
        return b'{"predictions":[]}', "application/json"


def wsgi_call(app: Callable, body: bytes) -> Callable[[], bytes]:
    environ = EnvironBuilder(path="/invocations", method="POST", data=body,
                             content_type="application/json").get_environ()

    def call() -> bytes:
        answer = app({**environ, "wsgi.input": io.BytesIO(body)}, lambda status, headers, exc_info=None: None)
        try:
            return b"".join(answer)
        finally:
            getattr(answer, "close", lambda: None)()

    return call


def mounted_invocations(config: settings.ServerConfig) -> None:
    app = serving.create_app("/nonexistent", config, load=lambda model_dir: Constant())
    assert app.extensions[serving.LOADER_KEY].wait(10)
    invocations = app.wsgi_app.handler  # the callable that the mount sends /invocations to
    routed = Flask("routed")  # the plain path: the same callable as a Flask view
    routed.add_url_rule("/invocations", "invocations", methods=["POST"],
                        view_func=lambda: Response.from_app(invocations, request.environ))
    body = b'{"instances": [[0]]}'
    row("/invocations in front of Flask's dispatch", cpu_us(wsgi_call(routed, body), 3000),
        cpu_us(wsgi_call(app, body), 3000), "every request", "test_invocations: mount")


def in_requests(model_dir: Path) -> None:
    """Fast paths inside the handler, timed over whole one-image JSON requests (decode, predict, encode) with
    the plain path swapped in and out, so that the caches are as cold as in a worker: in isolation the
    differences come out 3-5 times smaller."""
    handler = digits.loader()(model_dir)
    body = rig.random_digit_json()
    for name, attribute, plain_path, test in (
        ("one image scaled in 3 numpy calls, not 10", "_one_to_unit_range", codecs._each_to_unit_range,
         "test_codecs: one image scaled"),
    ):
        fast_path = getattr(codecs, attribute)
        figures: dict[str, list[float]] = {"plain": [], "fast": []}
        try:
            for round_ in range(6):
                for which in ("plain", "fast") if round_ % 2 else ("fast", "plain"):
                    setattr(codecs, attribute, plain_path if which == "plain" else fast_path)
                    figures[which].append(cpu_us(lambda: handler.invoke(body, codecs.JSON, "application/json"), 1000))
        finally:
            setattr(codecs, attribute, fast_path)
        row(name, statistics.median(figures["plain"]), statistics.median(figures["fast"]),
            "one-image JSON, decode to encode", test)


def gunicorn_stream(sock: socket.socket, length: int) -> Body:
    return Body(LengthReader(SocketUnreader(sock), length))


def read_over_socket(read: Callable[[Body, int], bytes], length: int, number: int) -> float:
    """CPU us of this thread per body of `length` bytes received through a socket pair."""
    payload = os.urandom(length)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)

        def one() -> None:
            sender = threading.Thread(target=theirs.sendall, args=(payload,))
            sender.start()
            assert len(read(gunicorn_stream(ours, length), length)) == length
            sender.join()

        return cpu_us(one, number)


def body_reads() -> None:
    limit = settings.MIB * 100

    def ours(stream: Body, length: int) -> bytes:
        return serving._read_body({"wsgi.input": stream, "CONTENT_LENGTH": str(length)}, limit, "100 MB")

    def plain(stream: Body, length: int) -> bytes:
        return stream.read(length)

    for length, where in ((3_136_128, "1,000 float32 images (3.1 MB)"), (784_128, "1,000 uint8 images (0.8 MB)")):
        row("body received into one buffer (recv_into)", read_over_socket(plain, length, 20),
            read_over_socket(ours, length, 20), where, "test_request_body")


def npy_headers() -> None:
    for count, where in ((1, "one-image npy"), (1000, "1,000-image npy")):
        buffer = io.BytesIO()
        np.save(buffer, np.zeros((count, 28, 28), np.uint8))
        body = buffer.getvalue()
        codecs._npy_array(body)  # the header is cached from now on
        row(".npy header parsed once per distinct header",
            cpu_us(lambda body=body: codecs._read_npy_header(io.BytesIO(body)), 500),
            cpu_us(lambda body=body: codecs._cached_npy_header(bytes(body[:128])), 500), where,
            "test_codecs: npy headers")


def plain_encoding(probabilities: np.ndarray, classes: list, kind: str) -> bytes:
    rows = [{"label": classes[i], "probabilities": row} for i, row in zip(probabilities.argmax(axis=1), probabilities)]
    if kind == codecs.JSONLINES:
        return b"".join(orjson.dumps(r, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE) for r in rows)
    if kind == codecs.CSV:
        return "".join(f"{codecs._csv_field(classes[i])}\n" for i in probabilities.argmax(axis=1).tolist()).encode()
    return orjson.dumps({"predictions": rows}, option=orjson.OPT_SERIALIZE_NUMPY)


def encodings() -> None:
    classes = list(range(10))
    for count in (1, 1000):
        probabilities = np.random.default_rng(count).dirichlet(np.ones(10), size=count).astype(np.float32)
        for kind in (codecs.JSON, codecs.JSONLINES, codecs.CSV):
            number = 2000 if count == 1 else 50
            row("answer spliced from one dump (per-class text)",
                cpu_us(lambda p=probabilities, k=kind: plain_encoding(p, classes, k), number),
                cpu_us(lambda p=probabilities, k=kind: codecs.encode(p, classes, k), number),
                f"{count:,} image{'s' if count > 1 else ''}, {kind}", "test_codecs: spliced encoding")


def request_log() -> None:
    cfg = Config()
    cfg.set("accesslog", os.devnull)
    cfg.set("access_log_format", server.ACCESS_LOG_FORMAT)
    theirs, ours = glogging.Logger(cfg), server.RequestLog(cfg)
    environ = EnvironBuilder(path="/invocations", method="POST", data=b"{}").get_environ()
    environ.update({"RAW_URI": "/invocations", "REMOTE_ADDR": "127.0.0.1", "SERVER_PROTOCOL": "HTTP/1.1"})
    req = type("Request", (), {"headers": [("HOST", "localhost:8080"), ("USER-AGENT", "wrk"),
                                           ("CONTENT-TYPE", "application/json"), ("CONTENT-LENGTH", "2")]})()
    resp = type("Response", (), {"status": "200 OK", "sent": 159, "headers": [("Content-Type", "application/json"),
                                                                                ("Content-Length", "159")]})()
    elapsed = timedelta(microseconds=612)
    stdout = os.dup(1)
    with open(os.devnull, "wb") as null:
        os.dup2(null.fileno(), 1)  # our line goes to fd 1
        try:
            plain = cpu_us(lambda: theirs.access(resp, req, environ, elapsed), 3000)
            fast = cpu_us(lambda: ours.access(resp, req, environ, elapsed), 3000)
        finally:
            os.dup2(stdout, 1)
            os.close(stdout)
    row("request log line written by hand", plain, fast, "every request", "test_server_application: request log")


WRK_REQUEST = (b"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: application/json\r\n"
               b"Accept: application/json\r\nContent-Length: 2\r\n\r\n{}")


def gunicorn_per_request() -> None:
    """What the worker cuts from gunicorn's own work per request: its settings read through Config.__getattr__
    (a request parsed and its environ built), its Date header's formatting, and its debug-level hook."""
    plain_cfg, fast_cfg = Config(), Config()
    worker.settings_as_attributes(fast_cfg)

    def parsed(cfg: Config) -> Callable[[], object]:
        peer, here = ("127.0.0.1", 40000), ("127.0.0.1", 8080)
        return lambda: gunicorn.http.wsgi.create(next(gunicorn.http.RequestParser(cfg, [WRK_REQUEST], peer)),
                                                 None, peer, here, cfg)

    row("gunicorn's settings read as attributes", cpu_us(parsed(plain_cfg), 3000), cpu_us(parsed(fast_cfg), 3000),
        "every request", "test_worker: settings as attributes")
    row("Date header formatted once a second", cpu_us(gunicorn.util.http_date, 20000), cpu_us(worker.http_date, 20000),
        "every request", "test_worker: the date header")
    cfg = Config()
    cfg.set("errorlog", os.devnull)
    log = SimpleNamespace(log=glogging.Logger(cfg))
    request = SimpleNamespace(method="POST", path="/invocations")
    row("no debug-level pre_request hook", cpu_us(lambda: cfg.pre_request(log, request), 20000),
        cpu_us(lambda: server._nothing_before_a_request(log, request), 20000), "every request",
        "test_server_application: main")


# `serve` with gunicorn's own sync worker in place of ours (only the read timeout, the JSON errors and the cuts
# measured by the rows of gunicorn_per_request kept):
# the plain side of the worker's fast paths, which only show whole, in requests under load.
STOCK_WORKER_SERVE = """
import gunicorn.util
from gunicorn.workers.sync import SyncWorker as Stock
from mxnet_byoc.serve import server, worker

class StockParts(Stock):
    def init_process(self):
        gunicorn.util.write_error = worker._write_json_error
        gunicorn.util.http_date = worker.http_date  # the per-request cuts that gunicorn_per_request() measures
        worker.settings_as_attributes(self.cfg)
        Stock.init_process(self)

    def handle(self, listener, client, addr):
        client.settimeout(self.app.config.read_timeout_s)
        Stock.handle(self, listener, client, addr)

server.SyncWorker = StockParts
raise SystemExit(server.main())
"""


def whole_requests(model_dir: Path, rounds: int = 12, seconds: int = 3) -> None:
    """One-image JSON through three `serve` processes at once, under wrk at concurrency 8 in turn: gunicorn's
    own worker, ours with keep-alive off (one send, leaner accept) and ours. The server CPU per request
    (medians of `rounds`), and each gain as the median of the differences within each round, which other load
    on the machine moves less."""
    wrk = rig.ensure_wrk()
    with tempfile.TemporaryDirectory(prefix="fastpath-serve-") as folder:
        work = Path(folder)
        script, body = rig.one_image_folder(work, model_dir)
        servers = {"stock": Server(work, work / "stock.log", [sys.executable, "-c", STOCK_WORKER_SERVE]),
                   "closing": Server(work, work / "closing.log", **{settings.KEEP_ALIVE_S: "0"}),
                   "ours": Server(work, work / "ours.log")}
        try:
            for one in servers.values():
                one.wait_loaded()
            figures: dict[str, list[float]] = {name: [] for name in servers}
            for round_ in range(rounds):
                for which in list(servers)[round_ % 3:] + list(servers)[:round_ % 3]:
                    run = rig.run_wrk(wrk, script, servers[which], body, "application/json", 8, seconds)
                    figures[which].append(run["cpu_us"])
        finally:
            for one in servers.values():
                one.stop()
    for name, plain, fast, test in [
            ("answer in one send; accept without 3 syscalls", "stock", "closing", "test_worker: one send"),
            ("connections kept open (keep-alive)", "closing", "ours", "test_worker, test_keep_alive")]:
        row(name, statistics.median(figures[plain]), statistics.median(figures[fast]),
            "one-image JSON request, wrk c=8", test,
            statistics.median(p - f for p, f in zip(figures[plain], figures[fast])))


def main() -> None:
    global REPEAT
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=REPEAT)
    parser.add_argument("--model-dir", type=Path, help="a model for the rows timed inside requests (default: a "
                        "1-epoch mlp, trained)")
    args = parser.parse_args()
    REPEAT = args.repeat
    allocator.restart_with_allocator()  # the allocator of serve's workers (this starts the bench again, once)
    for name, value in {**settings.WORKER_ENV_DEFAULTS, "MXNET_SUBGRAPH_VERBOSE": "0"}.items():
        os.environ.setdefault(name, value)  # as in a worker, before libmxnet.so is loaded
    print(f"uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    with tempfile.TemporaryDirectory(prefix="fastpath-bench-") as work:
        model_dir = args.model_dir or rig.train_model(Path(work), "mlp", 1)
        print(f"  {'fast path':44} {'plain us':>9} {'fast us':>9} {'gain us':>9}  {'per':34} pinned by")
        mounted_invocations(settings.from_env({}))
        request_log()
        gunicorn_per_request()
        body_reads()
        npy_headers()
        in_requests(model_dir)
        encodings()
        whole_requests(model_dir)


if __name__ == "__main__":
    main()
