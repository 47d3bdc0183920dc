"""`serve`'s entry (mxnet_byoc.serve.server): the settings are read once, in `main`; gunicorn's settings, nginx's
configuration and every worker's app come from that one ServerConfig; a bad setting or a missing nginx stops
`serve` with one line."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pytest

from mxnet_byoc.serve import app as predictor
from mxnet_byoc.serve import nginx, server, settings, supervisor, worker


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
    monkeypatch.setattr(nginx, "share_output", lambda: None)  # it would put pytest's own output in append mode


@pytest.fixture
def reads(monkeypatch) -> list[settings.ServerConfig]:
    """Every ServerConfig read from the environment from now on."""
    found = []
    original = settings.from_env

    def counted(env=None, gpu_count=0):
        found.append(original(env, gpu_count))
        return found[-1]

    monkeypatch.setattr(settings, "from_env", counted)
    return found


@pytest.fixture
def supervised(monkeypatch) -> dict:
    """What `main` hands the supervisor, run in this process: the model server (gunicorn's master, whose run()
    only records the Application) and nginx's configuration as it stood."""
    found: dict = {}

    def run(model_server, front_end, front_end_env) -> int:
        found["front_end"], found["env"] = front_end, front_end_env
        config_path = Path(front_end[front_end.index("-c") + 1])
        found["run_dir"], found["nginx.conf"] = config_path.parent, config_path.read_text()
        found["mode"] = config_path.parent.stat().st_mode & 0o777
        found["model_server"] = model_server()
        return 0

    monkeypatch.setattr(supervisor, "run", run)
    monkeypatch.setattr(server.Application, "run", lambda self: found.setdefault("application", self))
    return found


def test_main_reads_the_settings_once_and_gunicorn_nginx_and_the_app_use_them(monkeypatch, reads, supervised,
                                                                             tmp_path):
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(tmp_path))
    monkeypatch.setenv("SAGEMAKER_MODEL_SERVER_WORKERS", "3")
    monkeypatch.setenv("SAGEMAKER_MAX_PAYLOAD_IN_MB", "9")
    monkeypatch.setenv("SAGEMAKER_BIND_TO_PORT", "9191")
    monkeypatch.setenv("MXNET_BYOC_SERVE_HOST", "127.0.0.2")
    assert server.main() == 0
    assert len(reads) == 1 and supervised["model_server"] == 0
    application = supervised["application"]
    cfg, socket = application.cfg, supervised["run_dir"] / server.SOCKET_FILE
    assert (cfg.workers, cfg.timeout, cfg.bind) == (3, 60, [f"unix:{socket}"])
    assert cfg.worker_class is worker.SyncWorker and cfg.backlog == settings.BACKLOG
    assert cfg.graceful_timeout == settings.GRACEFUL_TIMEOUT_S - settings.FRONT_END_SHUTDOWN_S
    assert cfg.accesslog is None  # nginx writes the access line
    conf = supervised["nginx.conf"]
    assert "listen 127.0.0.2:9191 " in conf and f"server unix:{socket} " in conf
    assert f"client_max_body_size {9 * settings.MIB};" in conf
    assert supervised["front_end"][0] == nginx.executable() and "LD_PRELOAD" not in supervised["env"]
    assert supervised["mode"] == 0o755  # nginx's workers (nobody, when serve is root) reach the socket
    assert not supervised["run_dir"].exists()  # removed once serve has stopped
    app = application.load()  # what a worker does after the fork
    assert app.test_client().get("/execution-parameters").get_json()["MaxPayloadInMB"] == 9
    assert application.loader is app.extensions[predictor.LOADER_KEY]
    assert len(reads) == 1  # the worker's app took the config it was given


def test_worker_environment_defaults_leave_the_users_values(monkeypatch, supervised, tmp_path):
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert server.main() == 0
    assert os.environ["OMP_NUM_THREADS"] == "4" and os.environ["MXNET_ENGINE_TYPE"] == "NaiveEngine"


def test_a_bad_setting_is_one_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.setenv("SAGEMAKER_BIND_TO_PORT", "http")
    monkeypatch.setattr(supervisor, "run", lambda *a: pytest.fail("serve started"))
    assert server.main() == 2
    assert capsys.readouterr().err == "serve: SAGEMAKER_BIND_TO_PORT='http' is not a whole number\n"


def test_without_nginx_serve_says_what_to_install_and_exits_2(monkeypatch, capsys):
    monkeypatch.setattr(nginx.shutil, "which", lambda *a, **k: None)
    monkeypatch.setattr(supervisor, "run", lambda *a: pytest.fail("serve started"))
    assert server.main() == 2
    err = capsys.readouterr().err
    assert re.fullmatch(r"serve: nginx is not installed: .*apt-get install nginx\)\n", err), err


def test_the_run_folder_is_removed_when_serve_fails(monkeypatch, tmp_path):
    made = []
    original = server.tempfile.mkdtemp
    monkeypatch.setattr(server.tempfile, "mkdtemp", lambda **kw: made.append(original(**kw)) or made[-1])

    def crash(*args):
        raise RuntimeError("supervisor crashed")

    monkeypatch.setattr(supervisor, "run", crash)
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(tmp_path))
    with pytest.raises(RuntimeError):
        server.main()
    assert made and not Path(made[0]).exists()
