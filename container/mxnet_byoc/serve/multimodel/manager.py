"""The model management API of a multi-model server, as SageMaker drives it: load, list, get and unload.

It runs in gunicorn's master (never in a worker: a load waits for every worker, and a worker busy waiting would
answer no invocations meanwhile), on a unix socket of its own that nginx sends /models and /models/<name> to.
It alone writes the registry (state.py); the workers follow it (replica.py).

A load, `POST /models {"model_name", "url"}`:
1. 409 if the name is loaded or loading; 400 if the request or the folder is not usable.
2. The model's requirements.txt, if any, is installed (pip, constrained to the versions installed already).
3. 507 unless one copy fits: an estimate from the size of its files, and a margin kept for requests.
4. One worker loads it first and says how much its memory grew; 507 (that copy unloaded again) unless a copy
   for each other worker fits in what the container has left. Else every other worker loads it, in parallel.
5. 200 once every worker has it; if one cannot load it, the model is unloaded everywhere and the load answered
   with that worker's reason.
Loads of different models run in parallel (one thread of this server each); the workers' invocations never wait
for a load. An unload answers once every worker has let its copy go.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson
from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from ... import usercode
from .. import error_response, selection
from ..http_errors import BadRequest, HttpError
from ..mediatypes import JSON
from . import memory, state
from .replica import ModelNotLoaded

log = logging.getLogger("mxnet_byoc.multimodel")

LOAD_TIMEOUT_S = 600.0  # the most a load may take, all workers together (AWS's toolkit allows a model 600 s)
RESERVE_BYTES = 64 << 20  # kept free beyond the models' copies, besides a request body per worker
CODE_MODEL_BYTES = 64 << 20  # a first model with code makes its worker import the mxnet package
LOAD_OVERHEAD_BYTES = 8 << 20  # a C predict API binding's own memory, whatever the weights
FILES_FACTOR = 3  # a model's weights are read, then copied into MXNet's arrays (and reordered for MKL-DNN)
LIST_LIMIT = 100  # models per page of GET /models, as Multi Model Server pages them
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,254}$")  # safe as a path segment of /models/<name>/invoke
POLL_S = 0.5  # how often a waiting load looks at which workers are alive


class Conflict(HttpError):
    status = 409


class InsufficientStorage(HttpError):
    status = 507


class LoadFailed(HttpError):
    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class Manager:
    """Loads and unloads models on every live worker (`live_workers()`: their pids, gunicorn's WORKERS)."""

    def __init__(self, folder: Path, live_workers: Callable[[], Iterable[int]], max_payload_bytes: int = 6 << 20,
                 env: Mapping[str, str] | None = None, usage: Callable[[], memory.Usage] = memory.usage,
                 load_timeout_s: float = LOAD_TIMEOUT_S):
        self.folder = Path(folder)
        self.live_workers = live_workers
        self.max_payload_bytes = max_payload_bytes
        self.env = os.environ if env is None else env
        self.usage = usage
        self.load_timeout_s = load_timeout_s
        self.registry = state.Registry()
        state.write_registry(self.folder, self.registry)
        self._generations = itertools.count(1)
        self._lock = threading.Lock()  # the registry and the memory promised to loads in progress
        self._reserved: dict[str, int] = {}
        self._changed = threading.Condition()
        self._reports: dict[tuple[int, str, int], state.Report] = {}
        self._holding: dict[tuple[int, str], int] = {}  # (pid, model) -> the generation the worker holds
        self._started: set[int] = set()
        self._probes = itertools.count()
        self._constraints: Path | None = None
        self._sender = state.sender()
        self._socket = state.datagram_socket(self.folder / state.MANAGER_SOCKET)
        threading.Thread(target=self._receive, name="model-reports", daemon=True).start()

    # ---- the API --------------------------------------------------------------------------------------

    def load(self, name: str, url: str) -> dict[str, Any]:
        started = time.perf_counter()
        directory = Path(url)
        if not directory.is_dir():
            raise BadRequest(f"url {url!r} is not a folder in the container (SageMaker unpacks a model's "
                             "archive into /opt/ml/models/<name>/model)")
        with self._lock:
            if name in self.registry.models:
                what = "loaded" if self.registry.models[name].phase == state.READY else "being loaded"
                raise Conflict(f"model {name!r} is {what} already")
            generation = next(self._generations)
            self._set(name, state.Entry(url, generation, state.PREPARE))
        try:
            self._prepare(name, directory)
            probe = self._probe_worker()
            with self._lock:
                estimate = self._estimate(directory)
                self._check_fits(name, estimate, 1, "its files' size")
                self._reserved[name] = estimate
                self._set(name, state.Entry(url, generation, state.PROBE, probe))
            self._notify([probe])
            report = self._wait_probe(name, generation, probe)
            others = [pid for pid in self._live() if pid != probe]
            with self._lock:
                self._check_fits(name, max(report.bytes, LOAD_OVERHEAD_BYTES), len(others),
                                 f"the {memory.megabytes(report.bytes)} one copy took")
                self._reserved[name] = max(report.bytes, LOAD_OVERHEAD_BYTES) * len(others)
                self._set(name, state.Entry(url, generation, state.ALL))
            self._notify(others)
            self._wait_all(name, generation)
            with self._lock:
                self._reserved.pop(name, None)
                self._set(name, state.Entry(url, generation, state.READY))
        except BaseException:
            with self._lock:
                self._reserved.pop(name, None)
                self.registry.models.pop(name, None)
                state.write_registry(self.folder, self.registry)
            self._notify(self._live())
            self._await_release(name, generation)
            self._forget(name, generation)
            raise
        log.info("model %s loaded from %s on %d workers in %.3f s", name, url, len(self._live()),
                 time.perf_counter() - started)
        return {"status": f"model {name} loaded"}

    def unload(self, name: str) -> dict[str, Any]:
        with self._lock:
            entry = self.registry.models.get(name)
            if entry is None:
                raise ModelNotLoaded(f"model {name!r} is not loaded")
            if entry.phase != state.READY:
                raise Conflict(f"model {name!r} is being loaded; unload it once its load has been answered")
            del self.registry.models[name]
            state.write_registry(self.folder, self.registry)
        self._notify(self._live())
        self._wait(lambda live: not any(self._holding.get((pid, name)) == entry.generation for pid in live),
                   f"every worker to unload model {name}")
        self._forget(name, entry.generation)
        log.info("model %s unloaded", name)
        return {"status": f"model {name} unloaded"}

    def list(self, limit: int = LIST_LIMIT, token: str | None = None) -> dict[str, Any]:
        start = 0
        if token:
            if not token.isdigit():
                raise BadRequest(f"next_page_token {token!r} is not one this server gave")
            start = int(token)
        with self._lock:
            ready = sorted((n, e) for n, e in self.registry.models.items() if e.phase == state.READY)
        page = ready[start:start + limit]
        answer: dict[str, Any] = {"models": [{"modelName": n, "modelUrl": e.url} for n, e in page]}
        if start + limit < len(ready):
            answer["nextPageToken"] = str(start + limit)
        return answer

    def get(self, name: str) -> dict[str, Any]:
        with self._lock:
            entry = self.registry.models.get(name)
        if entry is None or entry.phase != state.READY:
            raise ModelNotLoaded(f"model {name!r} is not loaded")
        return {"modelName": name, "modelUrl": entry.url}

    # ---- steps of a load ------------------------------------------------------------------------------

    def _prepare(self, name: str, directory: Path) -> None:
        code = selection.code_in_model(directory, self.env)
        if code is None or not (code.code_dir / usercode.REQUIREMENTS_FILE).is_file():
            return
        with self._lock:
            if self._constraints is None:
                self._constraints = usercode.installed_constraints(self.folder / "installed-constraints.txt")
        try:
            usercode.install_requirements(code.code_dir, constraints=self._constraints)
        except usercode.UserCodeError as e:
            raise LoadFailed(f"model {name}: {e} (a model's requirements may add packages, not change the "
                             "version of one installed already)", 400) from None

    def _estimate(self, directory: Path) -> int:
        """What one copy may take before it is measured: its files, read and copied, and the mxnet package for a
        model with code."""
        files = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
        code = CODE_MODEL_BYTES if (directory / selection.CODE_FOLDER).is_dir() else 0
        return FILES_FACTOR * files + LOAD_OVERHEAD_BYTES + code

    def _check_fits(self, name: str, per_copy: int, copies: int, basis: str) -> None:
        """507 unless `copies` more copies of `per_copy` bytes fit beside the loads in progress and the margin."""
        if copies <= 0:
            return
        now = self.usage()
        margin = RESERVE_BYTES + len(self._live()) * self.max_payload_bytes
        promised = sum(v for n, v in self._reserved.items() if n != name)
        needed = per_copy * copies
        if needed + promised + margin > now.free:
            raise InsufficientStorage(
                f"model {name} needs about {memory.megabytes(needed)} ({copies} worker(s) x "
                f"{memory.megabytes(per_copy)}, from {basis}); {memory.megabytes(now.free)} of "
                f"{memory.megabytes(now.limit)} is free ({now.source}), of which "
                f"{memory.megabytes(margin + promised)} is kept for requests and loads in progress: unload a model")

    def _probe_worker(self) -> int:
        deadline = time.monotonic() + self.load_timeout_s
        with self._changed:
            while True:
                ready = sorted(set(self._live()) & self._started)
                if ready:
                    return ready[next(self._probes) % len(ready)]
                if time.monotonic() > deadline:
                    raise LoadFailed("no worker has started: the server log says why", 503)
                self._changed.wait(POLL_S)

    def _wait_probe(self, name: str, generation: int, probe: int) -> state.Report:
        self._wait(lambda live: probe not in live or (probe, name, generation) in self._reports,
                   f"worker {probe} to load model {name}")
        report = self._reports.get((probe, name, generation))
        if report is None:
            raise InsufficientStorage(f"the worker loading model {name} (pid {probe}) died while loading it; "
                                      "the likeliest cause is memory (the server log says)")
        if report.state == state.FAILED:
            raise LoadFailed(f"model {name}: {report.reason}", report.status)
        return report

    def _wait_all(self, name: str, generation: int) -> None:
        self._wait(lambda live: bool(live) and all((pid, name, generation) in self._reports for pid in live),
                   f"every worker to load model {name}")
        failed = [r for (_, n, g), r in list(self._reports.items())
                  if n == name and g == generation and r.state == state.FAILED]
        if failed:
            raise LoadFailed(f"model {name}, on worker {failed[0].pid}: {failed[0].reason}", failed[0].status)

    def _await_release(self, name: str, generation: int) -> None:
        """Until no worker holds the copy of a load that failed (so that SageMaker's retry finds its memory
        free), for at most the load timeout."""
        try:
            self._wait(lambda live: not any(self._holding.get((pid, name)) == generation for pid in live),
                       f"every worker to drop model {name}")
        except LoadFailed:
            log.warning("model %s: some worker still holds the copy of a failed load", name)

    def _wait(self, done: Callable[[set[int]], bool], what: str) -> None:
        deadline = time.monotonic() + self.load_timeout_s
        with self._changed:
            while not done(self._live()):
                if time.monotonic() > deadline:
                    raise LoadFailed(f"timed out after {self.load_timeout_s:.0f} s waiting for {what}", 500)
                self._changed.wait(POLL_S)

    # ---- shared state ---------------------------------------------------------------------------------

    def _set(self, name: str, entry: state.Entry) -> None:
        self.registry.models[name] = entry
        state.write_registry(self.folder, self.registry)

    def _live(self) -> set[int]:
        return set(self.live_workers())

    def _notify(self, pids: Iterable[int]) -> None:
        for pid in pids:
            state.send(self._sender, state.worker_socket(self.folder, pid), state.SYNC)

    def _forget(self, name: str, generation: int) -> None:
        with self._changed:
            for key in [k for k in self._reports if k[1] == name and k[2] == generation]:
                del self._reports[key]

    def _receive(self) -> None:
        while True:
            try:
                report = state.Report.decode(self._socket.recv(state.MAX_DATAGRAM))
            except OSError:
                return
            except (ValueError, TypeError):
                log.warning("a worker sent a report that is not one")
                continue
            with self._changed:
                if report.state == state.STARTED:
                    self._started.add(report.pid)
                elif report.state == state.UNLOADED:
                    if self._holding.get((report.pid, report.name)) == report.generation:
                        del self._holding[(report.pid, report.name)]
                else:
                    self._reports[(report.pid, report.name, report.generation)] = report
                    if report.state == state.LOADED:
                        self._holding[(report.pid, report.name)] = report.generation
                self._changed.notify_all()

    def close(self) -> None:
        self._socket.close()


# ---- HTTP -------------------------------------------------------------------------------------------

def create_app(manager: Manager) -> Flask:
    """The management API's routes, every error as JSON `{"error": ...}`."""
    app = Flask(__name__)

    @app.post("/models")
    def load() -> Response:
        name, url = _load_request()
        return _json(manager.load(name, url))

    @app.get("/models")
    def list_models() -> Response:
        limit = request.args.get("limit", str(LIST_LIMIT))
        if not limit.isdigit() or not 1 <= int(limit) <= LIST_LIMIT:
            raise BadRequest(f"limit {limit!r}: expected a whole number from 1 to {LIST_LIMIT}")
        return _json(manager.list(int(limit), request.args.get("next_page_token")))

    @app.get("/models/<name>")
    def get(name: str) -> Response:
        return _json(manager.get(name))

    @app.delete("/models/<name>")
    def unload(name: str) -> Response:
        return _json(manager.unload(name))

    @app.errorhandler(HttpError)
    def http_error(e: HttpError) -> Response:
        return _error(e.status, str(e))

    @app.errorhandler(HTTPException)
    def werkzeug_error(e: HTTPException) -> Response:
        return _error(e.code or 500, e.description or e.name)

    @app.errorhandler(Exception)
    def server_error(e: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return _error(500, error_response.internal_error(e))

    return app


def _load_request() -> tuple[str, str]:
    """model_name and url from the JSON body SageMaker sends (or the query, as Multi Model Server also takes)."""
    document: Any = dict(request.args)
    if request.get_data():
        try:
            document = orjson.loads(request.get_data())
        except orjson.JSONDecodeError as e:
            raise BadRequest(f"the body is not JSON: {e}") from None
        if not isinstance(document, dict):
            raise BadRequest('the body must be a JSON object: {"model_name": ..., "url": ...}')
    name, url = document.get("model_name"), document.get("url")
    if not isinstance(name, str) or not isinstance(url, str) or not url:
        raise BadRequest('expected {"model_name": "<name>", "url": "<folder of the model>"} with both strings')
    if not NAME.match(name):
        raise BadRequest(f"model_name {name!r}: expected 1 to 255 letters, digits, '.', '_' or '-', starting with a "
                         "letter or digit")
    return name, url


def _json(document: object) -> Response:
    return Response(orjson.dumps(document), status=200, mimetype=JSON)


def _error(status: int, message: str) -> Response:
    status_line, headers, body = error_response.render(status, message)
    return Response(body, status=status_line, headers=headers)


# ---- its server: nginx's uwsgi requests on a unix socket, one thread each ----------------------------

def serve(app: Any, path: Path) -> socket.socket:
    """Answer the requests nginx sends to the unix socket at `path` with `app`, each connection in a thread of
    its own (worker.py reads and answers them, as for the workers); returns the listening socket."""
    from ..worker import ProtocolError, answer, read_request

    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    os.chmod(path, 0o666)  # nginx's worker processes may run as another user
    listener.listen(128)

    def handle(client: socket.socket) -> None:
        try:
            answer(client, app, read_request(client))
        except ProtocolError as e:
            log.warning("not a uwsgi request: %s", e)
        except OSError:
            pass
        except Exception:
            log.exception("error while answering a model management request")
        finally:
            client.close()

    def accept() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(client,), name="models-request", daemon=True).start()

    threading.Thread(target=accept, name="models-api", daemon=True).start()
    return listener
