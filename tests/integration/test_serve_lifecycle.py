"""`container/serve` from start to stop: readiness before and without a model, models trained elsewhere,
bad settings, a crashed worker, and SIGTERM with a request in flight."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests

from devkit import net, project
from devkit.bodies import npy
from devkit.net import listening
from devkit.servers import Server
from devkit.waiting import wait_until
from mxnet_byoc import modeldir


def invoke(server, body: bytes, content_type: str = "application/x-npy") -> requests.Response:
    return requests.post(server.url("/invocations"), data=body, headers={"Content-Type": content_type}, timeout=30)


def probabilities(response: requests.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.array([p["probabilities"] for p in response.json()["predictions"]], dtype=np.float32)


def ping(server) -> requests.Response:
    return requests.get(server.url("/ping"), timeout=2)


def test_not_ready_without_a_model_then_ready_once_one_arrives(start_server, tmp_path, trained_model_dir,
                                                                digits, reference):
    base = tmp_path / "ml"
    base.mkdir()
    server = start_server(base)
    server.wait_listening()
    wait_until(lambda: "does not exist" in ping(server).text, what="503 naming the missing model")
    response = ping(server)
    assert response.status_code == 503 and response.headers["Content-Type"] == "application/json"
    assert f"{base / 'model'} does not exist" in response.json()["error"]
    refused = invoke(server, npy(digits[0][:1]))
    assert refused.status_code == 503 and "does not exist" in refused.json()["error"]
    assert requests.get(server.url("/execution-parameters"), timeout=2).status_code == 200

    shutil.copytree(trained_model_dir, tmp_path / "incoming")
    (tmp_path / "incoming").rename(base / "model")  # appears at once, as SageMaker unpacks before start
    server.wait_loaded()
    np.testing.assert_allclose(probabilities(invoke(server, npy(digits[0][:10]))), reference[:10], atol=1e-5)


def test_an_unusable_model_is_503_with_the_reason_and_the_server_stays_up(start_server, tmp_path,
                                                                          trained_model_dir):
    base = tmp_path / "ml"
    shutil.copytree(trained_model_dir, base / "model")
    (base / "model" / modeldir.PARAMS_FILE).write_bytes(b"this is not an MXNet params file")
    server = start_server(base)
    server.wait_listening()
    # Every worker has tried the model, failed, logged why, and taken requests (post_worker_init).
    wait_until(lambda: server.output().count("no usable model") >= server.workers, what="each worker's failure")
    workers = server.worker_pids()
    for _ in range(2 * server.workers):
        assert ping(server).status_code == 503
        assert "MXNet cannot load the model" in ping(server).json()["error"]
    assert server.process.poll() is None
    assert server.worker_pids() == workers and len(workers) == server.workers  # none died and was replaced
    assert "Worker exiting" not in server.output() and "Traceback" not in server.output()


def test_model_in_awss_layout_without_our_metadata_gets_awss_default_handlers(start_server, tmp_path,
                                                                             trained_model_dir, digits, reference):
    """As AWS's MXNet containers serve it: the network's raw outputs for the arrays sent (no pixel rule)."""
    base = tmp_path / "ml"
    shutil.copytree(trained_model_dir, base / "model")
    (base / "model" / modeldir.METADATA_FILE).unlink()
    server = start_server(base)
    server.wait_loaded()
    pixels = (digits[0][:20] / 255).astype(np.float32).reshape(20, 1, 28, 28)
    response = invoke(server, npy(pixels))
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/json"
    scores = np.array(response.json())
    assert scores.shape == (20, 10)
    softmax = np.exp(scores - scores.max(axis=1, keepdims=True))
    np.testing.assert_allclose(softmax / softmax.sum(axis=1, keepdims=True), reference[:20], atol=1e-5)
    assert "AWS's default MXNet handlers" in server.output()


def test_module_api_model_ending_in_softmax_output_answers_its_probabilities(start_server, tmp_path,
                                                                            trained_model_dir, digits, reference):
    """What AWS's MXNet container trains with the Module API: SoftmaxOutput head, a label input, no metadata."""
    import mxnet as mx

    symbol, args, aux = mx.model.load_checkpoint(str(trained_model_dir / modeldir.PREFIX), modeldir.EPOCH)
    module_symbol = mx.sym.SoftmaxOutput(symbol, name="softmax")
    base = tmp_path / "ml"
    (base / "model").mkdir(parents=True)
    mx.model.save_checkpoint(str(base / "model" / modeldir.PREFIX), modeldir.EPOCH, module_symbol, args, aux)
    (base / "model" / modeldir.SHAPES_FILE).write_text(json.dumps([{"name": "data", "shape": [1, 1, 28, 28]}]))
    server = start_server(base)
    server.wait_loaded()
    pixels = (digits[0][:20] / 255).astype(np.float32).reshape(20, 1, 28, 28)
    np.testing.assert_allclose(invoke(server, npy(pixels)).json(), reference[:20], atol=1e-5)


@pytest.mark.parametrize(
    "variable, value",
    [("SAGEMAKER_MODEL_SERVER_WORKERS", "many"), ("SAGEMAKER_BIND_TO_PORT", "0"),
     ("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT", "*/*")],
)
def test_a_bad_setting_stops_serve_with_one_clear_line(tmp_path, variable, value):
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(tmp_path), variable: value}
    result = subprocess.run([sys.executable, str(project.SERVE)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith(f"serve: {variable}=") and len(result.stderr.splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_a_killed_worker_is_replaced_and_loads_the_model(start_server, tmp_path, trained_model_dir, digits,
                                                         reference):
    base = tmp_path / "ml"
    shutil.copytree(trained_model_dir, base / "model")
    server = start_server(base, SAGEMAKER_MODEL_SERVER_WORKERS="1")
    server.wait_loaded()
    os.kill(server.worker_pids()[0], signal.SIGKILL)
    wait_until(lambda: server.output().count("model loaded from") >= 2, what="a new worker with the model")
    np.testing.assert_allclose(probabilities(invoke(server, npy(digits[0][:5]))), reference[:5], atol=1e-5)


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_sigterm_lets_the_request_in_flight_finish_then_exits(start_server, tmp_path, trained_model_dir,
                                                              digits, reference):
    base = tmp_path / "ml"
    shutil.copytree(trained_model_dir, base / "model")
    server = start_server(base)
    server.wait_loaded()
    body = npy(digits[0][:100])
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-npy\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body[: len(body) // 2])
        wait_until(lambda: server.holder_of(sock.getsockname()[1]), what="nginx reading the request")
        server.process.send_signal(signal.SIGTERM)
        # nginx stops taking connections at once, and waits for the request in flight; gunicorn, which is to
        # answer it, is stopped only after that.
        wait_until(lambda: not listening(server.port), what="nginx to stop listening")
        assert server.process.poll() is None, "serve exited with a request in flight"
        assert "Handling signal: term" not in server.output()
        sock.sendall(body[len(body) // 2 :])
        status, answer = read_response(sock)
    assert status == 200
    found = np.array([p["probabilities"] for p in json.loads(answer)["predictions"]], dtype=np.float32)
    np.testing.assert_allclose(found, reference[:100], atol=1e-5)
    assert server.process.wait(30) == 0
    log = server.output()
    assert log.index("POST /invocations HTTP/1.1\" 200") < log.index("Handling signal: term")
    assert "Shutting down: Master" in log


@pytest.mark.slow
def test_sigterm_stops_serve_even_when_a_client_stalls(start_server, tmp_path, trained_model_dir):
    """The stalled request is cut at the end of nginx's share of the grace period (test_settings: below
    SageMaker's 30 s)."""
    base = tmp_path / "ml"
    shutil.copytree(trained_model_dir, base / "model")
    server = start_server(base, SAGEMAKER_MODEL_SERVER_WORKERS="1")
    server.wait_loaded()
    with socket.create_connection(("127.0.0.1", server.port), timeout=120) as sock:
        sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-npy\r\n"
                     b"Content-Length: 1000000\r\n\r\n" + b"\0" * 1000)  # and never the rest
        wait_until(lambda: server.holder_of(sock.getsockname()[1]), what="nginx reading the request")
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(120) == 0  # a bound for a hang, far above the grace period


def test_gunicorn_serves_the_app_without_nginx(tmp_path, trained_model_dir, digits, reference):
    """`gunicorn 'predictor:create_app()'`, as SageMaker's examples run an app: gunicorn's own HTTP, no nginx. A
    chunk gunicorn cannot read is the client's mistake there too (400 with the reason)."""
    base = tmp_path / "ml"
    shutil.copytree(trained_model_dir, base / "model")
    port = net.free_port()
    server = Server(base, tmp_path / "gunicorn.log", [sys.executable, "-m", "gunicorn", "--chdir",
                                                      str(project.ROOT / "container"), "-w", "1",
                                                      "-b", f"127.0.0.1:{port}", "predictor:create_app()"], port=port)
    try:
        server.wait_ready()
        np.testing.assert_allclose(probabilities(invoke(server, npy(digits[0][:5]))), reference[:5], atol=1e-5)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                         b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\nabc\r\n0\r\n\r\n")
            status, answer = read_response(sock)
        assert status == 400 and json.loads(answer)["error"].startswith("the body could not be read")
        assert "Traceback" not in server.output()
    finally:
        server.stop()


@pytest.mark.parametrize("which", ["nginx", "gunicorn"])
def test_either_server_dying_stops_the_other_and_serve_fails(start_server, tmp_path, trained_model_dir, which):
    """supervisor.py: nginx's master or gunicorn's dying ends serve with status 1 (the container exits, and is
    replaced), the other stopped first; nothing is left running."""
    base = tmp_path / "ml"
    shutil.copytree(trained_model_dir, base / "model")
    server = start_server(base)
    server.wait_loaded()
    processes = server.pids()
    children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children").read_text().split()
    masters = {("nginx" if Path(f"/proc/{pid}/comm").read_text().strip() == "nginx" else "gunicorn"): int(pid)
               for pid in children}
    os.kill(masters[which], signal.SIGKILL)
    assert server.process.wait(60) == 1
    assert f"serve: {which} was killed by SIGKILL; stopping serve" in server.output()
    wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in processes), what="every process gone")
