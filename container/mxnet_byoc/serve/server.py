"""gunicorn's settings for `serve` (`gunicorn -c python:mxnet_byoc.serve.server`), from ServerConfig.

sync workers: one request at a time per worker, one worker per CPU by default (gthread workers gained
nothing in measurements). Each worker loads its own copy of the model after the fork.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import os
import sys

import gunicorn.util
from gunicorn.workers.sync import SyncWorker as GunicornSyncWorker

from . import settings

_config = settings.from_env()

# Before any worker loads libmxnet.so: one OpenMP thread per worker (the workers already fill the
# CPUs) and MXNet's synchronous engine, which saves a thread hand-off per operator.
os.environ.setdefault(settings.OMP_NUM_THREADS, "1")
os.environ.setdefault(settings.MXNET_ENGINE_TYPE, "NaiveEngine")

bind = [f"{_config.host}:{_config.port}"]
workers = _config.workers
worker_class = "mxnet_byoc.serve.server.SyncWorker"
timeout = _config.timeout_s
graceful_timeout = settings.GRACEFUL_TIMEOUT_S
proc_name = "mxnet-byoc-serve"
# The heartbeat file on tmpfs: a slow or overlay disk can stall it and get healthy workers killed.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
accesslog = "-"
errorlog = "-"
loglevel = "info"
# One line per request: client, request line, status, response bytes, latency in microseconds.
access_log_format = '%(h)s "%(r)s" %(s)s %(B)s %(D)sus'


def _write_json_error(sock: object, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's own answers (a request it cannot parse, such as a bad Content-Length; a worker killed
    mid-request) in the app's JSON error form instead of an HTML page."""
    body = json.dumps({"error": mesg or reason}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    gunicorn.util.write_nonblock(sock, head.encode("latin-1") + body)


# The workers call gunicorn.util.write_error for the errors above; they inherit this at fork.
gunicorn.util.write_error = _write_json_error


def on_starting(server: object) -> None:
    # The app's own messages (model loaded, load failures, tracebacks of 500s) go to stderr like gunicorn's.
    logger = logging.getLogger("mxnet_byoc")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s",
                                               "%Y-%m-%d %H:%M:%S %z"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def post_fork(server: object, worker: object) -> None:
    _reuse_freed_memory()


class SyncWorker(GunicornSyncWorker):
    """gunicorn's sync worker with a read timeout on every connection.

    gunicorn's own reads have none: a client that stalls in its headers or its body would hold the worker
    until the master kills it for not reporting in (a 500 and a worker restart). With it, a stall in the
    headers closes the connection, and one in the body gets 408 from the app."""

    def handle(self, listener: object, client: object, addr: object) -> None:
        client.settimeout(_config.read_timeout_s)  # type: ignore[attr-defined]
        super().handle(listener, client, addr)


def post_worker_init(worker: object) -> None:
    # Take connections only once the model is loaded (or failed to load): a worker started in place of a
    # dead one would otherwise answer 503 to requests and pings that the other workers could serve.
    # Bounded well below `timeout`, after which gunicorn kills a worker that has not reported in.
    predictor = sys.modules.get("mxnet_byoc.serve.app")  # absent when it serves another app (bench)
    loader = getattr(getattr(worker, "wsgi", None), "extensions", {}).get(predictor.LOADER_KEY) if predictor else None
    if loader is not None:
        loader.wait_first_attempt(_config.timeout_s / 2)


def _reuse_freed_memory() -> None:
    """Serve large arrays from glibc's heap instead of fresh mmaps.

    By default every array above 128 KiB (a 1,000-image batch is 3 MB) gets new pages from the kernel,
    which are zeroed on first touch: that doubled the time to decode a batch. Freed memory up to the trim
    threshold stays with the worker for the next request.
    """
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return
    mallopt = getattr(ctypes.CDLL(libc_name), "mallopt", None)
    if mallopt is None:  # not glibc
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 32 * 1024 * 1024)  # glibc's maximum
    mallopt(m_trim_threshold, 128 * 1024 * 1024)
