"""Script mode in real `serve` processes (container/serve, 2 gunicorn workers): requirements.txt installed
once by the master before the workers fork, /ping 200 only once model_fn has returned, failures on /ping."""

from __future__ import annotations

import re
import time

import requests

from devkit.script_models import copy_aws_model, write_script

SLOW_SCRIPT = """
    import os
    import time

    import numpy  # from requirements.txt


    def model_fn(model_dir):
        time.sleep(1.5)
        with open(os.path.join(model_dir, "..", f"loaded-{os.getpid()}"), "w") as f:
            f.write(repr(time.time()))
        return os.getpid()


    def transform_fn(pid, body, content_type, accept):
        return {"pid": pid, "body": body, "pythonpath": os.environ["PYTHONPATH"].split(os.pathsep)[0]}
"""


def test_requirements_once_then_model_fn_in_each_worker_before_ping_is_200(start_server, tmp_path):
    base = tmp_path / "ml"
    model_dir = copy_aws_model(base / "model")
    write_script(model_dir / "code", SLOW_SCRIPT)
    (model_dir / "code" / "requirements.txt").write_text("numpy\n")  # already installed: pip says so, offline
    server = start_server(base, SAGEMAKER_PROGRAM="inference.py")
    server.wait_listening(120)
    first_200 = None
    while first_200 is None:
        try:
            if requests.get(server.url("/ping"), timeout=5).status_code == 200:
                first_200 = time.time()
        except requests.RequestException:
            pass  # the worker takes connections once its model_fn has returned (or failed)
        assert server.process.poll() is None, server.output()
    loaded = sorted(float(p.read_text()) for p in base.glob("loaded-*"))
    assert loaded and first_200 > loaded[0]
    server.wait_loaded()
    log = server.output()
    assert log.count("installing the packages in") == 1 and log.count("Requirement already satisfied: numpy") == 1
    assert log.index("installing the packages in") < log.index("Booting worker")
    answers = {requests.post(server.url("/invocations"), data=b'"hi"', timeout=10,
                             headers={"Content-Type": "application/json"}).json()["pid"] for _ in range(20)}
    workers = set(map(int, re.findall(r"model loaded from .* \(pid (\d+)\)", log)))
    assert answers <= workers and len(workers) == 2
    answer = requests.post(server.url("/invocations"), data=b'"hi"', headers={"Content-Type": "application/json"},
                           timeout=10)
    assert answer.json()["body"] == '"hi"' and answer.json()["pythonpath"] == str(model_dir / "code")


def test_a_script_that_fails_to_import_is_the_ping_reason_and_in_the_log(start_server, tmp_path):
    base = tmp_path / "ml"
    model_dir = copy_aws_model(base / "model")
    write_script(model_dir / "code", "import no_such_package_here\n")
    server = start_server(base, SAGEMAKER_PROGRAM="inference.py")
    server.wait_listening(120)
    deadline = time.monotonic() + 60
    while True:
        ping = requests.get(server.url("/ping"), timeout=30)
        if ping.status_code == 503 and "importing" in ping.text or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    reason = ping.json()["error"]
    assert ping.status_code == 503 and "ModuleNotFoundError: No module named 'no_such_package_here'" in reason
    assert "import no_such_package_here" in server.output()  # the user's traceback, in the log
    assert requests.post(server.url("/invocations"), data=b"[[1, 2]]", timeout=10,
                         headers={"Content-Type": "application/json"}).status_code == 503
