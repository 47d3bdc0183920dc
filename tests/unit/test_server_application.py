"""`serve`'s gunicorn application (mxnet_byoc.serve.server): the settings are read once, in `main`, and
every gunicorn setting and every worker's app come from that one ServerConfig."""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from types import SimpleNamespace

import pytest
from gunicorn import glogging
from gunicorn.config import Config

from mxnet_byoc.serve import app as predictor
from mxnet_byoc.serve import server, settings, worker


@pytest.fixture(autouse=True)
def worker_environment(monkeypatch) -> None:
    """`main` sets these for the workers, and gives the app's logger a handler of its own that does not
    propagate (which would hide its records from later tests' caplog); whatever it sets is undone after each test."""
    for name in settings.WORKER_ENV_DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    logger = logging.getLogger("mxnet_byoc")
    monkeypatch.setattr(logger, "handlers", list(logger.handlers))
    monkeypatch.setattr(logger, "propagate", logger.propagate)
    monkeypatch.setattr(logger, "level", logger.level)


@pytest.fixture
def reads(monkeypatch) -> list[settings.ServerConfig]:
    """Every ServerConfig read from the environment from now on."""
    found = []
    original = settings.from_env

    def counted(env=None):
        found.append(original(env))
        return found[-1]

    monkeypatch.setattr(settings, "from_env", counted)
    return found


def test_main_reads_the_settings_once_and_the_workers_app_uses_them(monkeypatch, reads, tmp_path):
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(tmp_path))
    monkeypatch.setenv("SAGEMAKER_MODEL_SERVER_WORKERS", "3")
    monkeypatch.setenv("SAGEMAKER_MAX_PAYLOAD_IN_MB", "9")
    ran = []

    def run(self: server.Application) -> None:  # what a worker does, without gunicorn's master and fork
        ran.append((self.cfg, self.load(), self))

    monkeypatch.setattr(server.Application, "run", run)
    assert server.main() == 0
    (cfg, app, application), = ran
    assert len(reads) == 1
    assert (cfg.workers, cfg.timeout, cfg.bind) == (3, 60, [f"0.0.0.0:{reads[0].port}"])
    assert cfg.worker_class is worker.SyncWorker
    assert app.test_client().get("/execution-parameters").get_json()["MaxPayloadInMB"] == 9
    assert application.loader is app.extensions[predictor.LOADER_KEY]
    # gunicorn's default pre_request hook would call worker.log.debug for every request.
    cfg.pre_request(SimpleNamespace(log=None), SimpleNamespace(method="POST", path="/invocations"))
    assert len(reads) == 1  # the worker's app took the config it was given


def test_worker_environment_defaults_leave_the_users_values(monkeypatch):
    monkeypatch.setattr(server.Application, "run", lambda self: None)
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert server.main() == 0
    assert os.environ["OMP_NUM_THREADS"] == "4" and os.environ["MXNET_ENGINE_TYPE"] == "NaiveEngine"


def test_a_bad_setting_is_one_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.setenv("SAGEMAKER_BIND_TO_PORT", "http")
    monkeypatch.setattr(server.Application, "run", lambda self: pytest.fail("gunicorn started"))
    assert server.main() == 2
    assert capsys.readouterr().err == "serve: SAGEMAKER_BIND_TO_PORT='http' is not a whole number\n"


class FakeResponse:
    def __init__(self, status: str, sent: int | None):
        self.status, self.sent, self.headers = status, sent, [("Content-Type", "application/json")]


@pytest.mark.parametrize("environ, status, sent, elapsed", [
    ({"REMOTE_ADDR": "127.0.0.1", "RAW_URI": "/invocations"}, "200 OK", 159, timedelta(microseconds=612)),
    ({"REMOTE_ADDR": "10.0.0.7", "RAW_URI": '/ping?x="1"'}, "503 Service Unavailable", 57,
     timedelta(seconds=2, microseconds=5)),
    ({"RAW_URI": "/invocations"}, "400 Bad Request", 0, timedelta(0)),
])
def test_the_request_log_line_is_the_one_gunicorn_would_write(capfd, environ, status, sent, elapsed):
    environ = {"REQUEST_METHOD": "POST", "SERVER_PROTOCOL": "HTTP/1.1", "PATH_INFO": "/invocations", **environ}
    request = type("Request", (), {"headers": [("HOST", "localhost"), ("CONTENT-TYPE", "application/json")]})()
    response = FakeResponse(status, sent)
    cfg = Config()
    gunicorns = server.ACCESS_LOG_FORMAT % glogging.SafeAtoms(glogging.Logger(cfg).atoms(response, request, environ,
                                                                                        elapsed))
    capfd.readouterr()
    server.RequestLog(cfg).access(response, request, environ, elapsed)
    assert capfd.readouterr().out == gunicorns + "\n"
