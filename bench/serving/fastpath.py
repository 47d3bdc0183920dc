"""Serving's fast paths against the plain code they replace: each one's gain, beside its own noise.

A fast path stays only while its gain is above its noise: the gain is the median of the paired differences
(plain minus fast) of alternating measurements, its noise the standard error of that median (1.86 x the
differences' median absolute deviation / the square root of their number), and a row's target is a gain above
twice its noise. Each fast path's comment in mxnet_byoc.serve names its row here; a test pins its output to the
plain path's (named with the row).

- In one process, CPU time (thread_time) per call, best of 7: /invocations in front of Flask's dispatch, the
  codecs' paths (a one-image scale, .npy headers, spliced answers).
- Whole requests under wrk, server CPU per request (nginx included): `serve` beside the same `serve` with the
  plain transport put back: nginx proxying HTTP to gunicorn's own sync worker (as AWS's reference container
  does) in place of the uwsgi requests of worker.py, at concurrency 8; and gunicorn's own wait for a connection,
  which wakes every idle worker, in place of worker.py's, at concurrency 1 (where workers are idle) with
  WAKE_ONE_WORKERS workers: the herd grows with the idle workers, and an instance has one per CPU.
"""

from __future__ import annotations

import io
import os
import statistics
import sys
import time
import timeit
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import orjson
from flask import Flask, Response, request
from werkzeug.test import EnvironBuilder

from devkit.servers import Server
from figures import Figure
from mxnet_byoc.serve import app as serving
from mxnet_byoc.serve import codecs, digits, settings

from .rig import Bench, median, random_digit_json, serve_process

REPEAT = 7
ROUNDS = 8
WAKE_ONE_WORKERS = 4

# `serve` with nginx proxying HTTP (proxy_pass) to gunicorn's own sync worker: the transport worker.py replaces.
HTTP_SERVE = """
from mxnet_byoc.serve import allocator
allocator.restart_with_allocator()  # as container/serve does
from gunicorn.workers.sync import SyncWorker
from mxnet_byoc.serve import nginx, server
last = "            uwsgi_next_upstream off;"
start, end = nginx.TEMPLATE.index("            uwsgi_pass"), nginx.TEMPLATE.index(last) + len(last)
nginx.TEMPLATE = (nginx.TEMPLATE[:start] + '''            proxy_pass http://model_server;
            proxy_set_header Expect "";
            proxy_read_timeout {queue_timeout_s}s;
            proxy_next_upstream off;
''' + nginx.TEMPLATE[end:])
server.SyncWorker = SyncWorker
raise SystemExit(server.main())
"""

# `serve` whose workers wait for a connection as gunicorn's sync worker does (select(): every idle worker wakes).
SELECT_SERVE = """
from mxnet_byoc.serve import allocator
allocator.restart_with_allocator()  # as container/serve does
from gunicorn.workers.sync import SyncWorker
from mxnet_byoc.serve import server, worker

class SelectWait(worker.SyncWorker):
    wait = SyncWorker.wait

server.SyncWorker = SelectWait
raise SystemExit(server.main())
"""


def cpu_us(call: Callable[[], object], number: int) -> float:
    return min(timeit.repeat(call, number=number, repeat=REPEAT, timer=time.thread_time)) / number * 1e6


def kept(key: str, what: str, plain: list[float], fast: list[float], where: str, test: str) -> Figure:
    """A fast path's row from paired measurements (plain, fast): its gain against twice its noise."""
    differences = [p - f for p, f in zip(plain, fast)]
    gain = statistics.median(differences)
    # The median's standard error: 1.2533 x the standard deviation (1.4826 x the MAD for normal noise) / sqrt(n).
    noise = 1.858 * statistics.median(abs(d - gain) for d in differences) / len(differences) ** 0.5
    figure = Figure(f"serving.fastpath.{key}", f"{what} ({where}; pinned by {test})",
                    f"{statistics.median(fast):.1f} us, gain {gain:.1f} us (noise {noise:.1f})",
                    f"plain {statistics.median(plain):.1f} us", statistics.median(fast) / statistics.median(plain),
                    "gain > 2 x noise", gain > 2 * noise)
    print(figure.line(), flush=True)
    return figure


def paired(plain: Callable[[], object], fast: Callable[[], object], number: int) -> tuple[list[float], list[float]]:
    """ROUNDS alternating in-process measurements of each, in CPU microseconds per call."""
    found: tuple[list[float], list[float]] = ([], [])
    for round_ in range(ROUNDS):
        for which in (0, 1) if round_ % 2 == 0 else (1, 0):
            found[which].append(cpu_us((plain, fast)[which], number))
    return found


class Constant:
    """A handler that costs nothing, so that only the dispatch around it is measured."""

    def invoke(self, body: bytes, content_type: str | None, accept: str | None,
               headers: Mapping[str, str] | None = None) -> tuple[bytes, str]:
        return b'{"predictions":[]}', "application/json"


def wsgi_call(app: Callable, body: bytes, start_response: Callable = lambda *args: None) -> Callable[[], bytes]:
    environ = EnvironBuilder(path="/invocations", method="POST", data=body,
                             content_type="application/json").get_environ()

    def call() -> bytes:
        answer = app({**environ, "wsgi.input": io.BytesIO(body)}, start_response)
        try:
            return b"".join(answer)
        finally:
            getattr(answer, "close", lambda: None)()

    return call


def mounted_invocations() -> Figure:
    app = serving.create_app("/nonexistent", settings.from_env({}), load=lambda model_dir: Constant())
    assert app.extensions[serving.LOADER_KEY].wait(10)
    invocations = app.wsgi_app.handler  # the callable that the mount sends /invocations to
    routed = Flask("routed")  # the plain path: the same callable as a Flask view
    routed.add_url_rule("/invocations", "invocations", methods=["POST"],
                        view_func=lambda: Response.from_app(invocations, request.environ))
    body = b'{"instances": [[0]]}'
    answered = []
    wsgi_call(app, body, lambda status, headers, exc_info=None: answered.append(status))()
    assert answered == ["200 OK"], answered  # the constant answer, not an error path
    return kept("mount", "/invocations in front of Flask's dispatch",
                *paired(wsgi_call(routed, body), wsgi_call(app, body), 2000), "every request",
                "test_invocations: mount")


def one_image_scaled(model_dir: Path) -> Figure:
    """Timed over whole one-image JSON requests (decode, predict, encode) with the plain path swapped in and out,
    so that the caches are as cold as in a worker: in isolation the difference comes out smaller."""
    handler = digits.loader()(model_dir)
    body = random_digit_json()
    fast_path = codecs._one_to_unit_range

    def with_path(path: Callable) -> Callable[[], object]:
        def call() -> object:
            codecs._one_to_unit_range = path
            try:
                return handler.invoke(body, codecs.JSON, "application/json")
            finally:
                codecs._one_to_unit_range = fast_path
        return call

    return kept("one-image-scale", "one image scaled in 3 numpy calls, not 10",
                *paired(with_path(codecs._each_to_unit_range), with_path(fast_path), 1000),
                "one-image JSON, decode to encode", "test_codecs: one image scaled")


def npy_headers() -> list[Figure]:
    figures = []
    for count, where in ((1, "one-image npy"), (1000, "1,000-image npy")):
        buffer = io.BytesIO()
        np.save(buffer, np.zeros((count, 28, 28), np.uint8))
        body = buffer.getvalue()
        codecs._npy_array(body)  # the header is cached from now on
        figures.append(kept(f"npy-header-{count}", ".npy header parsed once per distinct header",
                            *paired(lambda body=body: codecs._read_npy_header(io.BytesIO(body)),
                                    lambda body=body: codecs._cached_npy_header(bytes(body[:128])), 500),
                            where, "test_codecs: npy headers"))
    return figures


def plain_encoding(probabilities: np.ndarray, classes: list, kind: str) -> bytes:
    rows = [{"label": classes[i], "probabilities": row} for i, row in zip(probabilities.argmax(axis=1), probabilities)]
    if kind == codecs.JSONLINES:
        return b"".join(orjson.dumps(r, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE) for r in rows)
    if kind == codecs.CSV:
        return "".join(f"{codecs._csv_field(classes[i])}\n" for i in probabilities.argmax(axis=1).tolist()).encode()
    return orjson.dumps({"predictions": rows}, option=orjson.OPT_SERIALIZE_NUMPY)


def encodings() -> list[Figure]:
    classes = list(range(10))
    figures = []
    for count in (1, 1000):
        probabilities = np.random.default_rng(count).dirichlet(np.ones(10), size=count).astype(np.float32)
        for kind in (codecs.JSON, codecs.JSONLINES, codecs.CSV):
            figures.append(kept(f"spliced-{count}-{kind.rsplit('/', 1)[1]}",
                                "answer spliced from one dump (per-class text)",
                                *paired(lambda p=probabilities, k=kind: plain_encoding(p, classes, k),
                                        lambda p=probabilities, k=kind: codecs.encode(p, classes, k),
                                        2000 if count == 1 else 50),
                                f"{count:,} image{'s' if count > 1 else ''}, {kind}", "test_codecs: spliced encoding"))
    return figures


def whole_requests(bench: Bench) -> list[Figure]:
    """The transport's two choices, each against serve with the plain way put back, in server CPU per one-image
    JSON request under wrk (the servers in alternation)."""
    args = bench.args
    base, body = bench.one_image_folder("fastpath")
    workers = {"SAGEMAKER_MODEL_SERVER_WORKERS": str(args.workers)}
    many = {"SAGEMAKER_MODEL_SERVER_WORKERS": str(WAKE_ONE_WORKERS)}
    servers = {"serve": serve_process(base, args.workers, bench.work / "fastpath-serve.log"),
               "http": Server(base, bench.work / "fastpath-http.log", [sys.executable, "-c", HTTP_SERVE], **workers),
               "serve-many": serve_process(base, WAKE_ONE_WORKERS, bench.work / "fastpath-serve-many.log"),
               "select": Server(base, bench.work / "fastpath-select.log", [sys.executable, "-c", SELECT_SERVE],
                                **many)}
    try:
        for server in servers.values():
            server.wait_loaded()
        http_runs = bench.alternate([servers["http"], servers["serve"]], body, [8])[8]
        select_runs = bench.alternate([servers["select"], servers["serve-many"]], body, [1])[1]
    finally:
        bench.stop(list(servers.values()))
    print(f"  (whole requests: {args.rounds} alternating rounds of {args.duration} s; serve "
          f"{median(http_runs[1], 'rps'):,.0f} req/s at concurrency 8; with {WAKE_ONE_WORKERS} workers "
          f"{median(select_runs[1], 'rps'):,.0f} at 1)")
    return [kept("uwsgi", "requests reach the worker as uwsgi, not HTTP",
                 [run["cpu_us"] for run in http_runs[0]], [run["cpu_us"] for run in http_runs[1]],
                 "one-image JSON request, wrk c=8", "test_worker"),
            kept("wake-one", "one idle worker woken per request",
                 [run["cpu_us"] for run in select_runs[0]], [run["cpu_us"] for run in select_runs[1]],
                 f"one-image JSON request, wrk c=1, {WAKE_ONE_WORKERS} workers", "test_worker: wakes one")]


def run(bench: Bench) -> list[Figure]:
    for name, value in settings.WORKER_ENV_DEFAULTS.items():  # as in a worker, before libmxnet.so is loaded
        os.environ.setdefault(name, value)
    print(f"each row: the fast path's CPU us, its gain over the plain path and the gain's noise ({ROUNDS} paired "
          f"rounds in one process; --rounds under wrk)", flush=True)
    figures = [mounted_invocations(), one_image_scaled(bench.model_dir()), *npy_headers(), *encodings()]
    return figures + whole_requests(bench)
