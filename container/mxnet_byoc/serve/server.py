"""`serve`: gunicorn, configured here and nowhere else, from the one ServerConfig that `main` reads.

Workers serve one request at a time (worker.py: gunicorn's sync worker, with connections kept open between
requests), one worker per CPU by default (gthread workers gained nothing in measurements). Each worker
builds its own app, and so loads its own copy of the model, after the fork.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from gunicorn import glogging
from gunicorn.app.base import BaseApplication

from .. import gpus
from . import device, digits, selection, settings
from .app import LOADER_KEY, ModelLoader, create_app
from .handler import Load
from .worker import ConnectionCounts, SyncWorker


def main() -> int:
    """`container/serve`: read the settings (a bad one stops here with one line, exit 2), then run gunicorn."""
    try:
        config = settings.from_env()
        gpus.require_supported()
    except (settings.ConfigError, gpus.UnsupportedGpu) as e:
        print(f"serve: {e}", file=sys.stderr)
        return 2
    for name, value in settings.WORKER_ENV_DEFAULTS.items():  # before any worker loads libmxnet.so
        os.environ.setdefault(name, value)
    # The handler is chosen and a user's code fetched and its requirements installed here, once, before
    # any worker forks (selection.py); what that logs goes where the workers' messages go.
    _log_app_messages(None)
    load = selection.loader(digits.loader(config.default_accept), config.default_accept)
    Application(config, load).run()  # gunicorn's master: exits the process itself
    return 0


class Application(BaseApplication):
    """gunicorn with `serve`'s settings; each worker's WSGI app is `create_app(config=...)`."""

    def __init__(self, config: settings.ServerConfig, load: Load | None = None):
        self.config = config
        self.load_handler = load
        self.loader: ModelLoader | None = None  # this worker's, once `load` has run in it
        self.connection_counts = ConnectionCounts(config.workers)  # before the fork: shared with the workers
        super().__init__()

    def load_config(self) -> None:
        config = self.config
        for name, value in {
            "bind": [f"{config.host}:{config.port}"],
            "workers": config.workers,
            "worker_class": SyncWorker,
            "timeout": config.timeout_s,
            "graceful_timeout": settings.GRACEFUL_TIMEOUT_S,
            "proc_name": "mxnet-byoc-serve",
            # The heartbeat file on tmpfs: a slow or overlay disk can stall it and get healthy workers killed.
            "worker_tmp_dir": "/dev/shm" if os.path.isdir("/dev/shm") else None,
            "logger_class": RequestLog,  # writes the access line to stdout itself
            "errorlog": "-",
            "loglevel": "info",
            "on_starting": _log_app_messages,
            "pre_fork": _assign_slot,
            "post_fork": _after_fork,
            "post_worker_init": self.wait_for_model,
            # gunicorn's default hook logs each request at debug level, which serve never logs at: 2.4 us of CPU
            # per request against 0.1 (bench/fastpath_bench.py), spent on a logger's level check.
            "pre_request": _nothing_before_a_request,
        }.items():
            self.cfg.set(name, value)

    def load(self) -> Any:
        """Called in each worker after the fork."""
        app = create_app(config=self.config, load=self.load_handler)
        self.loader = app.extensions[LOADER_KEY]
        return app

    def wait_for_model(self, worker: Any) -> None:
        """Take connections only once the model is loaded (or failed to load): a worker started in place of a
        dead one would otherwise answer 503 to requests and pings that the other workers could serve.
        Bounded well below `timeout`, after which gunicorn kills a worker that has not reported in."""
        assert self.loader is not None, "gunicorn loads the app before post_worker_init"
        self.loader.wait_first_attempt(self.config.timeout_s / 2)


# One line per request on stdout: client, request line, status, response bytes, latency in microseconds.
ACCESS_LOG_FORMAT = '%(h)s "%(r)s" %(s)s %(B)s %(D)sus'


class RequestLog(glogging.Logger):
    """gunicorn's logger, with the access line written by hand: the line gunicorn would write for
    ACCESS_LOG_FORMAT, with one os.write per request (atomic below 4 KiB, so workers never interleave).

    Why: gunicorn's own access log builds a dictionary of every header and environ entry, then goes through
    `logging`, for every request: 35 us of CPU against 1.5 (bench/fastpath_bench.py), an eighth of a
    one-image request's. Error and startup messages still go through gunicorn's logging."""

    def access(self, resp: Any, req: Any, environ: dict, request_time: Any) -> None:
        status = resp.status.split(None, 1)[0] if isinstance(resp.status, str) else resp.status
        client = environ.get("REMOTE_ADDR", "-")
        request = f"{environ['REQUEST_METHOD']} {environ['RAW_URI']} {environ['SERVER_PROTOCOL']}"
        if '"' in client or '"' in request:  # escaped as gunicorn's SafeAtoms does
            client, request = client.replace('"', '\\"'), request.replace('"', '\\"')
        micros = request_time.seconds * 1_000_000 + request_time.microseconds
        line = f'{client} "{request}" {status} {getattr(resp, "sent", None)} {micros}us\n'
        try:
            os.write(1, line.encode())
        except OSError:  # a closed or full stdout loses the line, never the request
            pass


def _log_app_messages(server: Any) -> None:
    # The app's own messages (model loaded, load failures, tracebacks of 500s) go to stderr like gunicorn's.
    logger = logging.getLogger("mxnet_byoc")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s",
                                               "%Y-%m-%d %H:%M:%S %z"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _nothing_before_a_request(worker: Any, request: Any) -> None:
    pass


def _assign_slot(server: Any, worker: Any) -> None:
    """In the master, before the fork: the lowest slot no live worker holds (device.py spreads the slots
    over the GPUs, so a worker started in place of a dead one takes its GPU)."""
    taken = {getattr(w, "slot", None) for w in server.WORKERS.values()}
    worker.slot = next(slot for slot in range(len(taken) + 1) if slot not in taken)


def _after_fork(server: Any, worker: Any) -> None:
    device.set_worker_slot(getattr(worker, "slot", 0))
