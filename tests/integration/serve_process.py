"""`container/serve` as a subprocess for tests: start on a free port, wait for the models, stop."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
SERVE = ROOT / "container" / "serve"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`container/serve` on a free 127.0.0.1 port with SAGEMAKER_BASE_DIR=`base`."""

    def __init__(self, base: Path, log: Path, **env: str):
        self.base = base
        self.log = log
        self.port = free_port()
        self.workers = int(env.get("SAGEMAKER_MODEL_SERVER_WORKERS", "2"))
        self.env = {
            **os.environ,
            "SAGEMAKER_BASE_DIR": str(base),
            "SAGEMAKER_BIND_TO_PORT": str(self.port),
            "SAGEMAKER_MODEL_SERVER_WORKERS": str(self.workers),
            "MXNET_BYOC_SERVE_HOST": "127.0.0.1",
            **env,
        }
        self.process = subprocess.Popen([sys.executable, str(SERVE)], env=self.env, stdout=open(log, "wb"),
                                        stderr=subprocess.STDOUT, start_new_session=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_listening(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"serve exited with {self.process.returncode}:\n{self.output()}"
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.02)
        raise AssertionError(f"serve did not listen within {timeout} s:\n{self.output()}")

    def wait_loaded(self, timeout: float = 60) -> None:
        """Until every worker has logged that its model is loaded (so any worker may take a request)."""
        deadline = time.monotonic() + timeout
        while len(set(re.findall(r"model loaded from .* \(pid (\d+)\)", self.output()))) < self.workers:
            assert self.process.poll() is None, f"serve exited with {self.process.returncode}:\n{self.output()}"
            assert time.monotonic() < deadline, f"models not loaded within {timeout} s:\n{self.output()}"
            time.sleep(0.02)
        assert requests.get(self.url("/ping"), timeout=5).status_code == 200

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode
