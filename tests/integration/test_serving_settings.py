"""Settings that users of AWS's MXNet image set, in a real `serve`: a default Accept that only some handlers can
answer, MMS_* variables honoured or refused, SAGEMAKER_PROGRAM naming a script in a subfolder of the code."""

from __future__ import annotations

import io
import subprocess

import numpy as np
import requests

from devkit import project
from devkit.mme_models import builtin_model
from devkit.script_models import AWS_INPUT, copy_aws_model, write_script
from devkit.waiting import wait_until


def test_a_default_accept_of_npy_is_answered_by_the_default_handlers(start_server, tmp_path):
    copy_aws_model(tmp_path / "ml" / "model")
    server = start_server(tmp_path / "ml", SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT="application/x-npy")
    server.wait_ready()
    answer = requests.post(server.url("/invocations"), json=AWS_INPUT, timeout=30)
    assert answer.status_code == 200 and answer.headers["Content-Type"] == "application/x-npy"
    np.testing.assert_allclose(np.load(io.BytesIO(answer.content)), [[4.9999918937683105]])


def test_a_default_accept_the_built_in_model_never_answers_is_ping_s_reason(start_server, tmp_path):
    builtin_model(tmp_path / "ml" / "model", "digits")
    server = start_server(tmp_path / "ml", SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT="application/x-npy")
    server.wait_listening()
    reason = wait_until(lambda: requests.get(server.url("/ping"), timeout=5).json().get("error", "")
                        .startswith("no usable model:") and requests.get(server.url("/ping"), timeout=5).json(),
                        60, "/ping's reason")
    assert reason == {"error": "no usable model: SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT=application/x-npy: the built-in "
                               "model answers application/json, application/jsonlines, text/csv"}


def test_an_mms_setting_serve_cannot_carry_out_stops_it_with_the_reason(tmp_path):
    env = {"SAGEMAKER_BASE_DIR": str(tmp_path), "MMS_CERTIFICATE_FILE": "/etc/ssl/cert.pem",
           "PATH": f"{project.python_bin()}:/usr/bin:/bin"}
    result = subprocess.run([str(project.python_bin() / "python"), str(project.SERVE)], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == ("serve: MMS_CERTIFICATE_FILE=/etc/ssl/cert.pem: serve speaks plain HTTP, as "
                                     "SageMaker talks to a container (it ends TLS itself); unset it")


def test_mms_workers_per_model_sets_the_workers(start_server, tmp_path):
    copy_aws_model(tmp_path / "ml" / "model")
    server = start_server(tmp_path / "ml", MMS_DEFAULT_WORKERS_PER_MODEL="1", SAGEMAKER_MODEL_SERVER_WORKERS="3")
    server.workers = 1
    server.wait_loaded()
    assert len(server.worker_pids()) == 1


def test_an_entry_point_in_a_subfolder_of_the_code(start_server, tmp_path):
    model_dir = copy_aws_model(tmp_path / "ml" / "model")
    write_script(model_dir / "code" / "serving", "from beside import answer\n\n\ndef model_fn(d):\n    return 1\n\n\n"
                                                 "def transform_fn(m, body, content_type, accept):\n"
                                                 "    return answer(body)\n", "entry.py")
    write_script(model_dir / "code" / "serving", "def answer(body):\n    return {'beside': len(body)}\n", "beside.py")
    server = start_server(tmp_path / "ml", SAGEMAKER_PROGRAM="serving/entry.py")
    server.wait_ready()
    answer = requests.post(server.url("/invocations"), data=b"12345", headers={"Content-Type": "text/plain"},
                           timeout=30)
    assert answer.status_code == 200 and answer.json() == {"beside": 5}
