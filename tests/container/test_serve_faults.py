"""`serve` in the CPU image when workers die: SIGKILLed under wrk's keep-alive load, killed by the kernel over the
container's memory limit (`docker run --memory`), and ended by gunicorn for running past
SAGEMAKER_MODEL_SERVER_TIMEOUT. Each death costs the request that worker was serving and nothing else: nginx holds
the clients' connections, and requests waiting for a worker wait in a socket no worker owns."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from devkit.idx import mnist_arrays
from devkit.jobs import TrainedJob
from devkit.script_models import copy_aws_model, write_script
from devkit.servers import ContainerServer
from devkit.shell import sh
from devkit.waiting import wait_until

pytestmark = [pytest.mark.container, pytest.mark.slow]

# In the container: SIGKILL to one of gunicorn's workers (the children of PID 1's child that is not nginx).
KILL_A_WORKER = """
import os, signal, sys
def children(pid):
    return [int(p) for p in open(f"/proc/{pid}/task/{pid}/children").read().split()]
masters = [p for p in children(1) if open(f"/proc/{p}/comm").read().strip() != "nginx"]
workers = sorted(w for master in masters for w in children(master))
victim = workers[int(sys.argv[1]) % len(workers)]
os.kill(victim, signal.SIGKILL)
print(victim)
"""

OOM_LIMIT = "900m"  # the container's memory: serve with 2 workers fits, one worker decoding the large batch does not

WRK_SCRIPT = """
wrk.method = "POST"
local f = assert(io.open(os.getenv("BODY"), "rb"))
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d\\n", summary.requests, e.connect + e.read + e.write + e.timeout + e.status))
end
"""


@contextlib.contextmanager
def steady_load(server: ContainerServer, body: str, clients: int = 4) -> Iterator[list[int]]:
    """`clients` threads posting `body` one after another on kept-open connections for the block: the statuses."""
    statuses: list[int] = []
    stop = threading.Event()

    def client() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                statuses.append(session.post(server.url("/invocations"), data=body, timeout=30,
                                             headers={"Content-Type": "application/json"}).status_code)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: len(statuses) > 20, what="steady requests")
        yield statuses
        served_before = len(statuses)
        wait_until(lambda: len(statuses) > served_before + 20, what="steady requests after the block")
    finally:
        stop.set()
        for thread in threads:
            thread.join()


def loaded(server: ContainerServer) -> int:
    return server.output().count("model loaded from")


def started(server: ContainerServer, workers: int) -> None:
    server.wait_ready()
    wait_until(lambda: loaded(server) >= workers, what=f"{workers} workers with their model", details=server.tail)


def test_sigkill_under_keep_alive_load_costs_at_most_the_request_in_flight(cpu_image: str, cpu_trained: TrainedJob,
                                                                          mnist_dir: Path, tmp_path: Path):
    wrk = shutil.which("wrk")
    assert wrk, "wrk is not installed (make test installs it)"
    image, _ = mnist_arrays(mnist_dir, "test", 1)
    (tmp_path / "one.json").write_text(json.dumps({"instances": [image[0].tolist()]}))
    (tmp_path / "post.lua").write_text(WRK_SCRIPT)
    server = ContainerServer(cpu_image, cpu_trained.model_dir, env={"SAGEMAKER_MODEL_SERVER_WORKERS": "2"})
    try:
        started(server, 2)
        load = subprocess.Popen([wrk, "-t1", "-c32", "-d12s", "--timeout", "10s", "-s", str(tmp_path / "post.lua"),
                                 server.url("/invocations")], env={**os.environ, "BODY": str(tmp_path / "one.json")},
                                stdout=subprocess.PIPE, text=True)
        kills = 0
        while load.poll() is None and kills < 3:
            time.sleep(3)  # the storm's rhythm: a worker killed every 3 s while wrk runs
            sh("docker", "exec", server.name, "python3", "-c", KILL_A_WORKER, str(kills))
            kills += 1
            wait_until(lambda kills=kills: loaded(server) >= 2 + kills, what="a new worker with its model",
                       details=server.tail)
        requests_done, failed = map(int, re.search(r"RESULT (\d+) (\d+)", load.communicate()[0]).groups())
        assert kills == 3 and requests_done > 1000
        assert failed <= kills, f"{failed} failed requests for {kills} kills"
        assert requests.get(server.url("/ping"), timeout=2).status_code == 200
        assert server.running()
    finally:
        server.remove()


def test_a_worker_killed_over_the_memory_limit_costs_only_its_request(cpu_image: str, cpu_trained: TrainedJob,
                                                                      mnist_dir: Path):
    """A 30,000-image JSON batch makes the worker that decodes it outgrow the container's memory; the kernel kills
    that worker (the largest process), and only that request fails, while others are served all along."""
    images, _ = mnist_arrays(mnist_dir, "test", 100)
    one = json.dumps({"instances": [images[0].tolist()]})
    large = json.dumps({"instances": images.tolist() * 300}).encode()  # 80 MB, below the 100 MB limit
    server = ContainerServer(cpu_image, cpu_trained.model_dir,
                             env={"SAGEMAKER_MODEL_SERVER_WORKERS": "2", "SAGEMAKER_MAX_PAYLOAD_IN_MB": "100"},
                             extra=["--memory", OOM_LIMIT, "--memory-swap", OOM_LIMIT])
    try:
        started(server, 2)
        with steady_load(server, one) as others:
            answer = requests.post(server.url("/invocations"), data=large, timeout=120,
                                   headers={"Content-Type": "application/json"})
            wait_until(lambda: loaded(server) >= 3, what="a new worker in place of the killed one",
                       details=server.tail)
        assert answer.status_code == 502 and "out of memory" in answer.json()["error"], answer.text
        assert "Perhaps out of memory?" in server.output()  # gunicorn's words for a worker that got SIGKILL
        assert set(others) == {200}, sorted(set(others))
        assert server.running()
    finally:
        server.remove()


# A handler that answers at once, or after `seconds` when the body says so: a request that runs past the timeout.
SLOW_SCRIPT = """
    import json
    import time


    def model_fn(model_dir):
        return None


    def transform_fn(model, body, content_type, accept):
        seconds = json.loads(body).get("sleep", 0)
        time.sleep(seconds)
        return {"slept": seconds}
"""


def test_a_request_past_the_timeout_costs_only_itself(cpu_image: str, tmp_path: Path):
    model_dir = copy_aws_model(tmp_path / "model")
    write_script(model_dir / "code", SLOW_SCRIPT)
    server = ContainerServer(cpu_image, model_dir, env={"SAGEMAKER_PROGRAM": "inference.py",
                                                        "SAGEMAKER_MODEL_SERVER_WORKERS": "2",
                                                        "SAGEMAKER_MODEL_SERVER_TIMEOUT": "4"})
    try:
        started(server, 2)
        with steady_load(server, json.dumps({"sleep": 0})) as answers:
            slow = requests.post(server.url("/invocations"), data=json.dumps({"sleep": 60}), timeout=60,
                                 headers={"Content-Type": "application/json"})
        assert slow.status_code == 502 and "SAGEMAKER_MODEL_SERVER_TIMEOUT" in slow.json()["error"]
        assert "WORKER TIMEOUT" in server.output()
        assert set(answers) == {200}, sorted(set(answers))
    finally:
        server.remove()

