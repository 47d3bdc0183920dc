"""Several hosts: MXNet's parameter server (ps-lite, `dist_sync`), set up from resourceconfig.json.

As AWS's MXNet containers do: a scheduler on the first host, one server on every host, every host a
worker. ps-lite itself never notices a dead peer (a `dist_sync` push then waits forever), so each host
also answers a heartbeat on `ps_port + 1`, and a watchdog fails the job when a peer stops answering for
`peer_timeout` seconds.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .environment import Resources, TrainingError

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL = 2.0
RUNNING, DONE = b"R", b"D"  # what a host's heartbeat port answers
_PR_SET_PDEATHSIG = 1

# kvstore keys: every worker exchanges the same thing under the same key.
WEIGHTS_KEY = 0  # rank 0's initial weights, pulled by every worker (loop.Trainer)
GRADIENTS_KEY = 1  # each step's gradients, pushed by every worker and pulled back summed (loop.Trainer)
RESUME_KEY = 98  # the position every host resumes from (checkpoints.Store.resume)
STEPS_KEY = 99  # the steps per epoch every host runs


def resolve(hosts: list[str], timeout: float) -> dict[str, str]:
    """Every host's address; SageMaker's DNS entries can lag the containers' start, so retry."""
    deadline = time.monotonic() + timeout
    addresses: dict[str, str] = {}
    while True:
        for host in hosts:
            if host not in addresses:
                try:
                    addresses[host] = socket.gethostbyname(host)
                except OSError:
                    pass
        missing = [h for h in hosts if h not in addresses]
        if not missing:
            return addresses
        if time.monotonic() > deadline:
            raise TrainingError(f"hosts {missing} did not resolve within {timeout:.0f} s (peer_timeout)")
        time.sleep(1.0)


@dataclass
class Cluster:
    resources: Resources
    addresses: dict[str, str]
    port: int

    @property
    def size(self) -> int:
        return len(self.resources.hosts)

    @property
    def root(self) -> str:
        return self.addresses[self.resources.hosts[0]]

    @property
    def me(self) -> str:
        return self.addresses[self.resources.current_host]

    def environment(self, role: str) -> dict[str, str]:
        env = {
            "DMLC_ROLE": role,
            "DMLC_PS_ROOT_URI": self.root,
            "DMLC_PS_ROOT_PORT": str(self.port),
            "DMLC_NUM_WORKER": str(self.size),
            "DMLC_NUM_SERVER": str(self.size),
            "DMLC_NODE_HOST": self.me,
            # The gradient travels as one flat key; slicing keys above 64k values spreads it over every
            # server instead of loading the one that owns the key (workers and servers must agree).
            "MXNET_KVSTORE_BIGARRAY_BOUND": "65536",
        }
        if self.resources.network_interface:
            env["DMLC_INTERFACE"] = self.resources.network_interface
        return env


def _die_with_parent() -> None:
    # A server or scheduler must not outlive a `train` killed with SIGKILL: it would keep peers waiting.
    try:
        ctypes.CDLL("libc.so.6").prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


class ParameterServers:
    """The scheduler (first host) and this host's server, as child processes of `train`."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self) -> None:
        roles = ["scheduler", "server"] if self.cluster.resources.is_master else ["server"]
        for role in roles:
            env = {**os.environ, **self.cluster.environment(role)}
            env.pop("MXNET_ENGINE_TYPE", None)  # servers need the threaded engine
            # Importing mxnet with DMLC_ROLE=server/scheduler runs that role until the workers finish.
            proc = subprocess.Popen([sys.executable, "-c", "import mxnet"], env=env, preexec_fn=_die_with_parent)
            self.procs.append((role, proc))
        for key, value in self.cluster.environment("worker").items():
            os.environ[key] = value

    def failed(self) -> str | None:
        for role, proc in self.procs:
            code = proc.poll()
            if code not in (None, 0):
                return f"the parameter-server {role} on {self.cluster.resources.current_host} exited with code {code}"
        return None

    def stop(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        for _, proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class Watchdog:
    """Answers peers' heartbeats and fails the job when a peer (or a local server) stops answering."""

    def __init__(self, cluster: Cluster, servers: ParameterServers, timeout: float,
                 on_failure: Callable[[str], None]):
        self.cluster, self.servers, self.timeout, self.on_failure = cluster, servers, timeout, on_failure
        self.port = cluster.port + 1
        self._stop = threading.Event()
        self._done = threading.Event()  # this host's work is over: its heartbeat answers say so
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Bound to this host's own address, so that several "hosts" can share one machine in tests.
        self._listener.bind((cluster.me, self.port))
        self._listener.listen(16)
        self._listener.settimeout(0.5)

    def start(self) -> None:
        threading.Thread(target=self._serve, daemon=True, name="heartbeat-server").start()
        threading.Thread(target=self._watch, daemon=True, name="heartbeat-watch").start()

    def stop(self) -> None:
        self._stop.set()

    def wait_for_peers(self, timeout: float) -> None:
        """Until every peer answers once (this host answers from construction on): hosts that start minutes
        apart (a user's requirements.txt to install first) then get the usual `timeout` from here on."""
        me = self.cluster.resources.current_host
        waiting = [h for h in self.cluster.resources.hosts if h != me]
        deadline = time.monotonic() + timeout
        while waiting:
            waiting = [h for h in waiting if not self._alive(self.cluster.addresses[h])]
            if waiting and time.monotonic() > deadline:
                raise TrainingError(f"hosts {waiting} did not come up within {timeout:.0f} s")
            if waiting:
                time.sleep(HEARTBEAT_INTERVAL / 2)

    def finish_together(self, should_stop: Callable[[], bool]) -> None:
        """This host is done (its heartbeat answers now say so, and it stops watching); return when every
        peer is done too, or gone, or `should_stop()`. SDK local mode stops every host as soon as the first
        container exits: a host that left early would cut short one that is still saving its model."""
        self._done.set()
        me = self.cluster.resources.current_host
        waiting = [h for h in self.cluster.resources.hosts if h != me]
        while waiting and not should_stop():
            waiting = [h for h in waiting if self._state(self.cluster.addresses[h]) == RUNNING]
            if waiting:
                time.sleep(HEARTBEAT_INTERVAL / 4)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
                with conn:
                    conn.sendall(DONE if self._done.is_set() else RUNNING)
            except OSError:
                continue
        self._listener.close()

    def _state(self, address: str) -> bytes:
        """RUNNING or DONE as the peer answers; b"" when it does not answer (gone)."""
        try:
            with socket.create_connection((address, self.port), timeout=HEARTBEAT_INTERVAL) as conn:
                return conn.recv(1)
        except OSError:
            return b""

    def _alive(self, address: str) -> bool:
        try:
            with socket.create_connection((address, self.port), timeout=HEARTBEAT_INTERVAL):
                return True
        except OSError:
            return False

    def _watch(self) -> None:
        me = self.cluster.resources.current_host
        peers = [h for h in self.cluster.resources.hosts if h != me]
        last_seen = {h: time.monotonic() for h in peers}  # the start-up grace is one timeout too
        while not self._stop.wait(HEARTBEAT_INTERVAL) and not self._done.is_set():
            local = self.servers.failed()
            if local:
                self._fail(f"{local}; failing the job instead of hanging")
                return
            now = time.monotonic()
            for host in peers:
                if self._alive(self.cluster.addresses[host]):
                    last_seen[host] = now
                elif now - last_seen[host] > self.timeout:
                    self._fail(f"host {host} stopped answering for {now - last_seen[host]:.0f} s (it died or the "
                               f"network failed); failing the job instead of hanging (peer_timeout={self.timeout:.0f})")
                    return

    def _fail(self, reason: str) -> None:
        if not self._stop.is_set() and not self._done.is_set():
            self.on_failure(reason)


def agree_min(kvstore, key: int, value: int) -> int:
    """The smallest `value` over all workers, exchanged under `key` (each agreement has its own)."""
    import mxnet as mx

    slots = mx.nd.zeros(kvstore.num_workers)
    slots[kvstore.rank] = value
    kvstore.init(key, mx.nd.zeros(kvstore.num_workers))
    kvstore.push(key, slots)
    kvstore.pull(key, out=slots)
    return int(slots.asnumpy().min())
