"""The Flask app behind `serve`: SageMaker's /ping, /invocations and /execution-parameters.

gunicorn calls `create_app()` once in each worker; the worker builds its `Handler` (handler.py: the built-in
digit model, or another implementation passed as `load`) in a background thread, so it answers /ping at
once: 503 with the reason until the handler is built, 200 after. A model directory that is missing or
unusable is retried whenever its files change.

POST /invocations, the one endpoint under load, is a plain WSGI callable mounted in front of Flask's
dispatch (Flask's documented `app.wsgi_app` middleware slot); Flask serves every other path. Why: Flask's
dispatch around the same callable is a large part of a one-image request's CPU (`bench/serve_bench.py --mode
fastpath`, row "/invocations in front of Flask's dispatch").

The body comes from the WSGI input stream, whichever server gives it (`serve`'s worker.py, gunicorn's own, a test
client); the app knows nothing of the server.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson
from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from .. import modeldir
from ..errors import ReasonError
from . import capi, digits, error_response, settings
from .handler import Handler, Load
from .http_errors import BadRequest, HttpError, PayloadTooLarge, RequestTimeout
from .mediatypes import JSON
from .multimodel.replica import Replica, model_builder

LOADER_KEY = "mxnet_byoc.model_loader"
REPLICA_KEY = "mxnet_byoc.model_replica"
MODELS_PREFIX, INVOKE_SUFFIX = "/models/", "/invoke"
POLL_INTERVAL_S = 1.0
DRAIN_LIMIT = 128 * settings.MIB  # read at most this much of a refused body (see _discard_body)

log = logging.getLogger("mxnet_byoc.predictor")
# A load failing with one of these is explained by its message (a user's traceback is logged where it arose).
REASON_ERRORS = (ReasonError, capi.InferenceError)


class ModelLoader:
    """Builds the handler once, off the request thread; `handler` is None until it is ready to serve."""

    def __init__(self, model_dir: Path, load: Load):
        self.model_dir = model_dir
        self.load = load
        self.handler: Handler | None = None
        self.reason = f"the model in {model_dir} is loading"
        self._loaded = threading.Event()
        self._attempted = threading.Event()  # the first load has finished, either way

    def start(self) -> None:
        threading.Thread(target=self._run, name="model-loader", daemon=True).start()

    def wait(self, timeout: float | None = None) -> bool:
        """True once the handler is built (tests use it; the server answers 503 meanwhile)."""
        return self._loaded.wait(timeout)

    def wait_first_attempt(self, timeout: float | None = None) -> bool:
        """True once the first load has succeeded or failed: gunicorn's post_worker_init waits for it, so
        that a worker started in place of a dead one takes no requests (503s) while the others serve."""
        return self._attempted.wait(timeout)

    def _run(self) -> None:
        tried: object = object()
        while True:
            state = _directory_state(self.model_dir)
            if state != tried:
                tried = state
                loaded = self._try_load()
                self._attempted.set()
                if loaded:
                    return
            time.sleep(POLL_INTERVAL_S)

    def _try_load(self) -> bool:
        started = time.perf_counter()
        try:
            handler = self.load(self.model_dir)
        except Exception as e:  # any failure is a reason for /ping, never a dead worker
            self.reason = f"no usable model: {e}"
            if isinstance(e, REASON_ERRORS):
                log.error("%s (retried when %s changes)", self.reason, self.model_dir)
            else:
                log.exception("loading the model in %s failed", self.model_dir)
            return False
        self.handler = handler
        self._loaded.set()
        log.info("model loaded from %s in %.3f s: %s (pid %d)",
                 self.model_dir, time.perf_counter() - started, handler, os.getpid())
        return True


def _directory_state(path: Path) -> object:
    """Names, sizes and times of the files in `path` (None when it cannot be listed): a change means retry."""
    try:
        return tuple(sorted((e.name, s.st_size, s.st_mtime_ns) for e in os.scandir(path) for s in [e.stat()]))
    except OSError:
        return None


def create_app(model_dir: str | Path | None = None, config: settings.ServerConfig | None = None,
               load: Load | None = None, models_folder: Path | None = None) -> Flask:
    """The app for one worker; starts building its handler with `load` (default: the built-in digit model)
    from `model_dir` (default $SAGEMAKER_BASE_DIR/model). `serve` passes the config it read; without one the
    environment is read here (`gunicorn 'predictor:create_app()'`). With SAGEMAKER_MULTI_MODEL=true, the
    worker of a multi-model server instead: `models_folder` is where its manager keeps the registry."""
    config = config or settings.from_env()
    if config.multi_model:
        return _multi_model_app(config, models_folder, load)
    loader = ModelLoader(Path(model_dir) if model_dir else modeldir.default_dir(),
                         load or digits.loader(config.default_accept))
    app = _common_app(config)
    app.extensions[LOADER_KEY] = loader

    @app.get("/ping")
    def ping() -> Response:
        if loader.handler is None:
            return _error(503, loader.reason)
        return _json({"status": "healthy"})

    app.wsgi_app = _Mount("/invocations", Invocations(loader, config), app.wsgi_app)  # type: ignore[method-assign]
    loader.start()
    return app


def _multi_model_app(config: settings.ServerConfig, folder: Path | None, build: Any) -> Flask:
    """A worker of a multi-model server: /models/<name>/invoke answered by its copy of the model (replica.py);
    nginx sends the model management API to the manager in gunicorn's master, never here."""
    if folder is None:
        raise settings.ConfigError(f"{settings.MULTI_MODEL}=true needs `serve`, which runs the model manager")
    replica = Replica(folder, build or model_builder(config.default_accept), prepare=capi.library)
    app = _common_app(config)
    app.extensions[REPLICA_KEY] = replica

    @app.get("/ping")
    def ping() -> Response:
        if not replica.started.is_set():
            return _error(503, "loading the models loaded before this worker started")
        return _json({"status": "healthy"})

    @app.post("/invocations")
    def invocations() -> Response:
        _discard_body(request.environ)
        return _error(404, "this is a multi-model endpoint: invoke a model with POST /models/<name>/invoke "
                           "(SageMaker's InvokeEndpoint with TargetModel)")

    app.wsgi_app = _ModelMount(ModelInvocations(replica, config), app.wsgi_app)  # type: ignore[method-assign]
    replica.start()
    return app


def _common_app(config: settings.ServerConfig) -> Flask:
    """Flask with /execution-parameters and the error handlers every worker has."""
    app = Flask(__name__)

    @app.get("/execution-parameters")
    def execution_parameters() -> Response:
        return _json(config.execution_parameters())

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException) -> Response:
        _discard_body(request.environ)
        allow = []
        if isinstance(e, MethodNotAllowed) and e.valid_methods:  # a 405 must say what is allowed (RFC 9110)
            allow = [("Allow", ", ".join(e.valid_methods))]
        return _error(e.code or 500, e.description or e.name, allow)

    @app.errorhandler(Exception)
    def server_error(e: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return _error(500, error_response.internal_error(e))

    return app


def _json(document: object) -> Response:
    return Response(orjson.dumps(document), status=200, mimetype=JSON)


def _error(status: int, message: str, headers: error_response.Headers | None = None) -> Response:
    status_line, all_headers, body = error_response.render(status, message, headers)
    return Response(body, status=status_line, headers=all_headers)


class ModelNotReady(HttpError):
    """The model is loading, or cannot be loaded: the reason says which."""

    status = 503


class Invocations:
    """POST /invocations as a WSGI callable: the body to the handler, its answer or error back."""

    def __init__(self, loader: ModelLoader, config: settings.ServerConfig):
        self.loader = loader
        self.config = config

    def handler(self, environ: dict) -> contextlib.AbstractContextManager[Handler]:
        """The handler for this request, for the time it takes to answer it."""
        handler = self.loader.handler
        if handler is None:
            raise ModelNotReady(self.loader.reason)
        return contextlib.nullcontext(handler)

    def __call__(self, environ: dict, start_response: Any) -> list[bytes]:
        try:
            if environ.get("REQUEST_METHOD") != "POST":
                return _error_answer(start_response, 405, f"use POST for {environ.get('PATH_INFO')}",
                                     [("Allow", "POST")])
            with self.handler(environ) as handler:
                try:
                    body = _read_body(environ, self.config.max_payload_bytes, self.config.max_payload_text)
                except TimeoutError:  # a server whose input stream has a read timeout
                    raise RequestTimeout(
                        f"the body stalled: nothing arrived for {self.config.read_timeout_s:g} s") from None
                except OSError as e:  # the server could not read the body: a malformed chunk, a connection cut short
                    raise BadRequest(f"the body could not be read: {e or type(e).__name__}") from None
                answer, content_type = handler.invoke(body, environ.get("CONTENT_TYPE"), environ.get("HTTP_ACCEPT"),
                                                      RequestHeaders(environ))
            start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(answer)))])
            return [answer]
        except HttpError as e:
            if not isinstance(e, RequestTimeout):  # a stalled client would stall the drain as well
                _discard_body(environ)
            return _error_answer(start_response, e.status, str(e))
        except Exception as e:  # a real fault: logged with its traceback; the worker goes on serving
            log.exception("unexpected error on %s %s", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"))
            return _error_answer(start_response, 500, error_response.internal_error(e))


class ModelInvocations(Invocations):
    """POST /models/<name>/invoke on a worker of a multi-model server: this worker's copy of the model."""

    def __init__(self, replica: Replica, config: settings.ServerConfig):
        self.replica = replica
        self.config = config

    def handler(self, environ: dict) -> contextlib.AbstractContextManager[Handler]:
        return self.replica.use(environ["PATH_INFO"][len(MODELS_PREFIX):-len(INVOKE_SUFFIX)])


class RequestHeaders(Mapping):
    """A request's headers read from its WSGI environ when a handler asks (most never do): `name: value`,
    names in lower case."""

    def __init__(self, environ: dict):
        self.environ = environ

    def __getitem__(self, name: str) -> str:
        key = name.upper().replace("-", "_")
        value = self.environ.get(key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{key}")
        if value is None:
            raise KeyError(name)
        return value

    def __iter__(self) -> Iterator[str]:
        for key in self.environ:
            if key.startswith("HTTP_"):
                yield key[5:].lower().replace("_", "-")

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _error_answer(start_response: Any, status: int, message: str,
                  headers: error_response.Headers | None = None) -> list[bytes]:
    status_line, all_headers, body = error_response.render(status, message, headers)
    start_response(status_line, all_headers)
    return [body]


class _Mount:
    """Sends one path to a WSGI callable and everything else to Flask."""

    def __init__(self, path: str, handler: Any, fallback: Any):
        self.path, self.handler, self.fallback = path, handler, fallback

    def __call__(self, environ: dict, start_response: Any) -> Any:
        if environ.get("PATH_INFO") == self.path:
            return self.handler(environ, start_response)
        return self.fallback(environ, start_response)


class _ModelMount:
    """Sends POST /models/<name>/invoke to a WSGI callable and everything else to Flask."""

    def __init__(self, handler: Any, fallback: Any):
        self.handler, self.fallback = handler, fallback

    def __call__(self, environ: dict, start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        if path.startswith(MODELS_PREFIX) and path.endswith(INVOKE_SUFFIX) and \
                "/" not in path[len(MODELS_PREFIX):-len(INVOKE_SUFFIX)]:
            return self.handler(environ, start_response)
        return self.fallback(environ, start_response)


def _read_body(environ: dict, limit: int, limit_text: str) -> bytes:
    """The request body, refused above `limit` bytes: by its Content-Length before reading anything, or
    while reading a chunked body that has none."""
    stream = environ["wsgi.input"]
    declared = environ.get("CONTENT_LENGTH")
    if declared:
        try:
            length = int(declared)
        except ValueError:
            raise BadRequest(f"Content-Length {declared!r} is not a number") from None
        if length > limit:
            raise PayloadTooLarge(f"the body has {length} bytes; the limit is {limit_text}")
        try:
            body = stream.read(length)
        except MemoryError:  # the one allocation here is the body's: its size is the cause
            raise PayloadTooLarge(f"the body has {length} bytes, more than this worker can hold now") from None
        if len(body) < length:
            raise BadRequest(f"the body ended after {len(body)} of its {length} bytes")
        return body
    parts, size = [], 0
    while True:
        part = stream.read(min(1 << 20, limit + 1 - size))
        if not part:
            return b"".join(parts)
        size += len(part)
        if size > limit:
            raise PayloadTooLarge(f"the body is larger than the limit of {limit_text}")
        parts.append(part)


def _discard_body(environ: dict) -> None:
    """Read what is left of a refused body: closing a socket with unread data resets the connection,
    and the client would see a broken pipe instead of the status that tells it what to fix."""
    stream = environ.get("wsgi.input")
    if stream is None:
        return
    remaining = DRAIN_LIMIT
    try:
        while remaining > 0:
            chunk = stream.read(min(remaining, 1 << 20))
            if not chunk:
                break
            remaining -= len(chunk)
    except (OSError, ValueError):
        pass
