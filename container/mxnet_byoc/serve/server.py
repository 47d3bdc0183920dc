"""`serve`: nginx in front of gunicorn (nginx.py), both children of this process (supervisor.py), both configured
from the one ServerConfig that `main` reads; gunicorn is configured here and nowhere else.

gunicorn runs the workers (worker.py: its sync worker, reading the requests that nginx sends in the uwsgi protocol),
one request at a time each, one worker per CPU by default (gthread workers gained nothing in measurements), each
request a connection of its own from nginx on a unix socket. Each worker builds its own app, and so loads its own
copy of the model, after the fork.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication

from .. import gpus
from . import awssettings, device, digits, nginx, selection, settings, supervisor
from .app import LOADER_KEY, REPLICA_KEY, ModelLoader, create_app
from .multimodel.manager import Manager
from .multimodel.manager import create_app as create_models_app
from .multimodel.manager import serve as serve_models_api
from .multimodel.replica import Replica, model_builder
from .worker import SyncWorker

SOCKET_FILE = "gunicorn.sock"
MODELS_SOCKET_FILE = "models.sock"  # a multi-model server's management API (the manager in gunicorn's master)


def main() -> int:
    """`container/serve`: read the settings (a bad one stops here with one line, exit 2), then run gunicorn and
    nginx until SIGTERM; the exit status of `serve`."""
    try:
        visible = gpus.require_supported()
        config = settings.from_env(gpu_count=len(visible))
        nginx.executable()
    except (settings.ConfigError, gpus.UnsupportedGpu, nginx.NotInstalled) as e:
        print(f"serve: {e}", file=sys.stderr)
        return 2
    for notice in config.notices:
        print(f"serve: {notice}", file=sys.stderr)
    os.environ.update(awssettings.read(os.environ).visible_gpus(os.environ))
    for name, value in settings.WORKER_ENV_DEFAULTS.items():  # before any worker loads libmxnet.so
        os.environ.setdefault(name, value)
    run_dir = Path(tempfile.mkdtemp(prefix="mxnet-byoc-serve-"))
    try:
        run_dir.chmod(0o755)  # nginx's workers run as nobody when serve runs as root: they open the socket in it
        socket = run_dir / SOCKET_FILE
        nginx.write_config(config, run_dir, socket, run_dir / MODELS_SOCKET_FILE if config.multi_model else None)
        nginx.share_output()
        return supervisor.run(lambda: run_gunicorn(config, socket, run_dir), nginx.command(run_dir),
                              nginx.environment())
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def run_gunicorn(config: settings.ServerConfig, socket: Path, run_dir: Path | None = None) -> int:
    """gunicorn's master, in a child of `serve`. The handler is chosen and a user's code fetched and its
    requirements installed here, once, before any worker forks (selection.py); what that logs goes where the
    workers' messages go. A multi-model server's manager runs here too (multimodel/manager.py)."""
    _log_app_messages(None)
    if config.multi_model:
        assert run_dir is not None, "a multi-model server keeps its registry in serve's run folder"
        Application(config, model_builder(config.default_accept), socket, run_dir).run()
        return 0
    load = selection.loader(digits.loader(config.default_accept), config.default_accept)
    Application(config, load, socket).run()  # exits the process itself
    return 0


class Application(BaseApplication):
    """gunicorn with `serve`'s settings on a unix socket; each worker's WSGI app is `create_app(config=...)`."""

    def __init__(self, config: settings.ServerConfig, load: Any = None, socket: Path | None = None,
                 run_dir: Path | None = None):
        self.config = config
        self.load_handler = load
        self.socket = socket
        self.run_dir = run_dir  # a multi-model server's: its registry, its manager's socket
        self.loader: ModelLoader | None = None  # this worker's, once `load` has run in it
        self.replica: Replica | None = None  # a multi-model server worker's models
        self.manager: Manager | None = None  # in the master of a multi-model server
        super().__init__()

    def load_config(self) -> None:
        for name, value in {
            "bind": [f"unix:{self.socket}"],
            "backlog": settings.BACKLOG,
            "workers": self.config.workers,
            "worker_class": SyncWorker,
            "timeout": self.config.timeout_s,
            # nginx has had its share of the grace period when gunicorn is stopped (supervisor.py).
            "graceful_timeout": settings.GRACEFUL_TIMEOUT_S - settings.FRONT_END_SHUTDOWN_S,
            "proc_name": "mxnet-byoc-serve",
            # The heartbeat file on tmpfs: a slow or overlay disk can stall it and get healthy workers killed.
            "worker_tmp_dir": "/dev/shm" if os.path.isdir("/dev/shm") else None,
            "errorlog": "-",  # the access line is nginx's
            "loglevel": "info",
            "on_starting": _log_app_messages,
            "pre_fork": _assign_slot,
            "post_fork": _after_fork,
            "post_worker_init": self.wait_for_model,
            "when_ready": self.start_manager,
            "worker_exit": self.worker_exit,
        }.items():
            self.cfg.set(name, value)

    def load(self) -> Any:
        """Called in each worker after the fork."""
        app = create_app(config=self.config, load=self.load_handler, models_folder=self.run_dir)
        self.loader = app.extensions.get(LOADER_KEY)
        self.replica = app.extensions.get(REPLICA_KEY)
        return app

    def wait_for_model(self, worker: Any) -> None:
        """Take connections only once the model is loaded (or failed to load), or, in a multi-model server, once
        this worker has every loaded model: a worker started in place of a dead one would otherwise answer 503
        to requests and pings that the other workers could serve. Bounded well below `timeout`, after which
        gunicorn kills a worker that has not reported in."""
        if self.replica is not None:
            self.replica.started.wait(self.config.timeout_s / 2)
            return
        assert self.loader is not None, "gunicorn loads the app before post_worker_init"
        self.loader.wait_first_attempt(self.config.timeout_s / 2)

    def worker_exit(self, server: Any, worker: Any) -> None:
        """A multi-model server's worker takes its socket away: the manager stops counting on it."""
        if self.replica is not None:
            self.replica.close()

    def start_manager(self, server: Any) -> None:
        """In the master of a multi-model server, once it listens: the model management API on its own socket,
        for nginx to send /models to. gunicorn's WORKERS are the live workers (it reaps and replaces them)."""
        if not self.config.multi_model or self.run_dir is None:
            return
        self.manager = Manager(self.run_dir, lambda: list(server.WORKERS), self.config.max_payload_bytes)
        serve_models_api(create_models_app(self.manager), self.run_dir / MODELS_SOCKET_FILE)


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


def _assign_slot(server: Any, worker: Any) -> None:
    """In the master, before the fork: the lowest slot no live worker holds (device.py spreads the slots
    over the GPUs, so a worker started in place of a dead one takes its GPU)."""
    taken = {getattr(w, "slot", None) for w in server.WORKERS.values()}
    worker.slot = next(slot for slot in range(len(taken) + 1) if slot not in taken)


def _after_fork(server: Any, worker: Any) -> None:
    device.set_worker_slot(getattr(worker, "slot", 0))
