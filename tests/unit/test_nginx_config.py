"""nginx's configuration (mxnet_byoc.serve.nginx), written from serve's settings: nginx itself accepts it, and it
says what the settings say."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mxnet_byoc.serve import nginx, settings


def rendered(tmp_path: Path, **env: str) -> str:
    return nginx.render(settings.from_env(env), tmp_path, tmp_path / "gunicorn.sock")


@pytest.mark.parametrize("env", [{}, {"SAGEMAKER_MAX_PAYLOAD_IN_MB": "0", "MXNET_BYOC_KEEP_ALIVE_S": "0",
                                      "SAGEMAKER_MODEL_SERVER_TIMEOUT": "1", "MXNET_BYOC_SERVE_HOST": "::1"}])
def test_nginx_accepts_the_configuration(tmp_path, env):
    nginx.write_config(settings.from_env(env), tmp_path, tmp_path / "gunicorn.sock")
    result = subprocess.run([*nginx.command(tmp_path), "-t"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_the_settings_reach_nginx(tmp_path):
    conf = rendered(tmp_path, SAGEMAKER_BIND_TO_PORT="9090", MXNET_BYOC_SERVE_HOST="127.0.0.1",
                    SAGEMAKER_MAX_PAYLOAD_IN_MB="100", MXNET_BYOC_KEEP_ALIVE_S="7", SAGEMAKER_MODEL_SERVER_TIMEOUT="9",
                    SAGEMAKER_MODEL_SERVER_WORKERS="3")
    assert f"listen 127.0.0.1:9090 backlog={settings.BACKLOG};" in conf
    assert f"client_max_body_size {100 * settings.MIB};" in conf  # refused by Content-Length, before the body
    assert f"client_body_buffer_size {100 * settings.MIB};" in conf  # never a temporary file
    assert "keepalive_timeout 7;" in conf
    assert "client_header_timeout 4500ms;" in conf and "client_body_timeout 4500ms;" in conf  # the read timeout
    assert "uwsgi_read_timeout 18s;" in conf  # longer than gunicorn's timeout: queued requests outlive a stuck one
    assert f"server unix:{tmp_path / 'gunicorn.sock'} max_fails=0;" in conf
    assert "uwsgi_next_upstream off;" in conf  # a request that killed its worker is never sent again
    assert f"worker_shutdown_timeout {settings.FRONT_END_SHUTDOWN_S}s;" in conf and "daemon off;" in conf


def test_an_ipv6_host_is_bracketed():
    assert nginx.listen_address("::", 8080) == "[::]:8080"
    assert nginx.listen_address("0.0.0.0", 8080) == "0.0.0.0:8080"


def test_one_nginx_process_per_eight_model_workers():
    assert [nginx.worker_processes(n) for n in (1, 8, 9, 96)] == [1, 1, 2, 12]


def test_every_answer_of_nginx_itself_is_json_with_a_reason(tmp_path):
    conf = rendered(tmp_path, SAGEMAKER_MAX_PAYLOAD_IN_MB="7", SAGEMAKER_MODEL_SERVER_TIMEOUT="30")
    pages = dict(re.findall(rf"error_page (\d+) (?:=\d+ )?{re.escape(nginx.ERROR_PAGES)}(\d+);", conf))
    assert set(pages) == {str(nginx.NGINX_STATUS.get(s, s)) for s in nginx.REASONS}
    for status in nginx.REASONS:
        (text,) = re.findall(rf"location = {re.escape(nginx.ERROR_PAGES)}{status} {{ internal; (?:add_header .*; )?"
                             rf"return 200 '(.*)'; }}", conf)
        reason = json.loads(text.replace("\\'", "'"))["error"]
        assert reason and "{" not in reason, reason
    assert "limit of 7 MB (SAGEMAKER_MAX_PAYLOAD_IN_MB)" in conf
    assert "no answer within 60 s" in conf
    assert f"error_page 494 =431 {nginx.ERROR_PAGES}431;" in conf  # nginx's 494 is answered as RFC 6585's 431


def test_nginx_runs_without_serves_allocator(monkeypatch):
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    assert set(nginx.environment()) <= {"PATH", "TZ"}


SHARE = """
import os, sys
from mxnet_byoc.serve import nginx
nginx.share_output()
os.write(1, b"python\\n")
with open("/dev/stdout", "ab") as again:  # as nginx opens its access log
    again.write(b"nginx\\n")
os.write(1, b"python again\\n")
"""


def test_output_to_a_file_is_shared_in_append_mode(tmp_path):
    """nginx opens /dev/stdout anew: without append mode the Python processes' writes would overwrite its lines."""
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        subprocess.run([sys.executable, "-c", SHARE], stdout=out, check=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert log.read_text() == "python\nnginx\npython again\n"
