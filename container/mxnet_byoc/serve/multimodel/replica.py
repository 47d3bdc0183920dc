"""A worker's copies of the models of a multi-model server: loaded and unloaded to match the registry (state.py),
in a thread of their own, while the worker's request thread goes on answering the models it has.

Loads run one at a time in one long-lived thread. One at a time: MXNet cannot create two models at once in a
process (the second creation can fail inside MXNet's parameter parsing: "The any container is empty"). One thread
for every load: MXNet keeps state per thread that outlives the thread (about 5 MiB), which a thread per load would
leave behind at every load.

Every worker holds every loaded model, so that any worker answers any model: nginx hands each request to
whichever worker is free, a model that gets most of the requests gets every CPU, and a worker that dies takes no
model with it. A model costs each worker a copy (the C predict API's bindings cannot be shared between
processes); docs/multi-model.md has the figures.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ... import modeldir, usercode
from ...errors import ReasonError
from .. import capi, digits, error_response, selection
from ..handler import DefaultAcceptError, Handler
from ..http_errors import HttpError
from ..privatecode import PrivateCode
from . import memory, state

log = logging.getLogger("mxnet_byoc.multimodel")

Build = Callable[[str, Path], Handler]  # (model name, model directory) -> its handler on this worker


class ModelNotLoaded(HttpError):
    status = 404


class ModelUnavailable(HttpError):
    status = 503


def model_builder(default_accept: str, env: Mapping[str, str] | None = None) -> Build:
    """How a worker builds a model's handler: as a server of one model would (selection.build), the model's own
    code in a private package (privatecode.py)."""
    env = os.environ if env is None else env
    builtin = digits.loader(default_accept)

    def build(name: str, directory: Path) -> Handler:
        code = selection.code_in_model(directory, env)
        private = None
        if code is not None:
            importlib.invalidate_caches()  # the manager may just have installed the model's requirements
            private = PrivateCode(code.folders, name)
        return selection.build(directory, code, builtin, default_accept, private, name)

    return build


def failure(e: BaseException) -> tuple[int, str]:
    """The status and reason a failed load is answered with."""
    if isinstance(e, MemoryError):
        return 507, "out of memory while loading the model"
    if isinstance(e, (modeldir.ModelDirError, DefaultAcceptError, usercode.UserCodeError)):
        return 400, str(e)
    if isinstance(e, (ReasonError, capi.InferenceError)):
        return 500, str(e)
    return 500, f"loading failed: {error_response.internal_error(e)}"


@dataclass
class _Copy:
    generation: int
    handler: Handler
    in_use: threading.Lock = field(default_factory=threading.Lock)


class Replica:
    """This worker's models. `use(name)` lends a model's handler to a request; the thread started by `start`
    keeps the set in line with the registry."""

    def __init__(self, folder: Path, build: Build, pid: int | None = None, prepare: Callable[[], object] | None = None):
        self.folder = Path(folder)
        self.build = build
        self.prepare = prepare  # run once before the first pass (loading libmxnet.so: the first load is quicker)
        self.pid = pid or os.getpid()
        self.started = threading.Event()  # the first pass over the registry is done
        self._lock = threading.Lock()
        self._copies: dict[str, _Copy] = {}
        self._loading: set[tuple[str, int]] = set()
        self._failed: dict[tuple[str, int], tuple[int, str]] = {}
        self._socket_path = state.worker_socket(self.folder, self.pid)
        self._socket = None
        self._sender = state.sender()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="model-load")

    # ---- serving --------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def use(self, name: str) -> Iterator[Handler]:
        """The handler of `name` for one request; an unload waits for the request to finish."""
        with self._lock:
            copy = self._copies.get(name)
        if copy is None:
            raise self._missing(name)
        with copy.in_use:
            if copy.handler is None:  # unloaded while this request waited
                raise self._missing(name)
            yield copy.handler

    def loaded(self) -> dict[str, int]:
        with self._lock:
            return {name: copy.generation for name, copy in self._copies.items()}

    def _missing(self, name: str) -> HttpError:
        entry = state.read_registry(self.folder).models.get(name)
        if entry is None or entry.phase != state.READY:
            return ModelNotLoaded(f"model {name!r} is not loaded")
        failed = self._failed.get((name, entry.generation))
        if failed:
            return ModelUnavailable(f"model {name!r} could not be loaded on this worker: {failed[1]}")
        return ModelUnavailable(f"model {name!r} is still loading on this worker")

    # ---- following the registry -----------------------------------------------------------------------

    def start(self) -> None:
        self._socket = state.datagram_socket(self._socket_path)
        threading.Thread(target=self._run, name="model-sync", daemon=True).start()

    def _run(self) -> None:
        if self.prepare is not None:
            try:
                self.prepare()
            except Exception:  # each load will say what is wrong
                log.exception("preparing this worker to load models failed")
        for load in self.sync():
            load.result()
        self.started.set()
        log.info("worker ready with the %d models loaded before it started (pid %d)", len(self.loaded()), self.pid)
        self._report(state.Report(self.pid, state.STARTED))
        while True:
            try:
                self._socket.recv(state.MAX_DATAGRAM)
            except OSError:  # closed: the worker is stopping
                return
            self.sync()

    def sync(self) -> list[Future]:
        """Unload what the registry no longer lists, start loading what it lists and this worker lacks; the
        loads started."""
        registry = state.read_registry(self.folder)
        wanted = {name: e for name, e in registry.models.items() if e.wanted_by(self.pid)}
        with self._lock:
            stale = [(name, copy) for name, copy in self._copies.items()
                     if name not in wanted or wanted[name].generation != copy.generation]
            for name, _ in stale:
                del self._copies[name]
            starting = [(name, e) for name, e in wanted.items()
                        if (name not in self._copies or self._copies[name].generation != e.generation)
                        and (name, e.generation) not in self._loading and (name, e.generation) not in self._failed]
            self._loading.update((name, e.generation) for name, e in starting)
        for name, copy in stale:
            self._unload(name, copy)
        return [self._pool.submit(self._load, name, e) for name, e in starting]

    def _load(self, name: str, entry: state.Entry) -> None:
        before = memory.anonymous_bytes()
        started = time.perf_counter()
        try:
            handler = self.build(name, Path(entry.url))
        except Exception as e:
            status, reason = failure(e)
            if status == 500 and not isinstance(e, (ReasonError, capi.InferenceError)):
                log.exception("loading model %s from %s failed", name, entry.url)
            else:
                log.error("model %s cannot be loaded from %s: %s", name, entry.url, reason)
            with self._lock:
                self._loading.discard((name, entry.generation))
                self._failed[(name, entry.generation)] = (status, reason)
            self._report(state.Report(self.pid, state.FAILED, name, entry.generation, reason, status))
            return
        grown = max(0, memory.anonymous_bytes() - before)
        with self._lock:
            self._loading.discard((name, entry.generation))
            self._copies[name] = _Copy(entry.generation, handler)
        log.info("model %s loaded from %s in %.3f s (%s): %s (pid %d)", name, entry.url,
                 time.perf_counter() - started, memory.megabytes(grown), handler, self.pid)
        self._report(state.Report(self.pid, state.LOADED, name, entry.generation, bytes=grown))
        self._wake()  # the registry may have changed while it loaded

    def _unload(self, name: str, copy: _Copy) -> None:
        with copy.in_use:  # a request using it finishes first
            handler, copy.handler = copy.handler, None
            try:
                close = getattr(handler, "close", None)
                if close is not None:
                    close()
            except Exception:
                log.exception("closing model %s failed", name)
        del handler
        gc.collect()  # a user's model may sit in reference cycles (modules, closures)
        memory.release()
        log.info("model %s unloaded (pid %d)", name, self.pid)
        self._report(state.Report(self.pid, state.UNLOADED, name, copy.generation))

    def _report(self, report: state.Report) -> None:
        state.send(self._sender, self.folder / state.MANAGER_SOCKET, report.encode())

    def _wake(self) -> None:
        state.send(self._sender, self._socket_path, state.SYNC)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
        self._socket_path.unlink(missing_ok=True)

