"""`serve` as a process (`container/serve` from the project's virtualenv) or as a container of the image:
started on a free port, waited for through what it answers and logs, stopped."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from . import KitError, docker, net, project, shell
from .waiting import wait_until

WORKERS = "SAGEMAKER_MODEL_SERVER_WORKERS"
LOADED = re.compile(r"model loaded from .* \(pid (\d+)\)")  # each worker logs it once its model is ready


class _Server:
    port: int
    started: float  # time.perf_counter() at start

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def running(self) -> bool:
        raise NotImplementedError

    def output(self) -> str:
        raise NotImplementedError

    def tail(self) -> str:
        return self.output()[-shell.TAIL:]

    def _fail(self, what: str) -> KitError:
        return KitError(f"{what}:\n{self.tail()}")

    def wait_ready(self, timeout: float = 120) -> float:
        """Until GET /ping answers 200; the seconds since the start. KitError, with the log, when the
        server stops first or `timeout` passes."""

        def ready() -> bool:
            if not self.running():
                raise self._fail("serve exited before /ping answered 200")
            return net.status(self.url("/ping")) == 200

        wait_until(ready, timeout, "/ping answering 200", details=self.tail, interval=0.05)
        return time.perf_counter() - self.started


class Server(_Server):
    """`container/serve` (or another gunicorn `command` with serve's settings) as a process on a free
    127.0.0.1 port, with SAGEMAKER_BASE_DIR=`base`, its output in `log`, and `env` on top of this
    environment (SAGEMAKER_MODEL_SERVER_WORKERS defaults to 2). `port`: the one a `command` that does not
    read SAGEMAKER_BIND_TO_PORT has been told to bind."""

    def __init__(self, base: Path, log: Path, command: Sequence[str] | None = None, port: int | None = None,
                 **env: str):
        self.base, self.log = Path(base), Path(log)
        self.port = port or net.free_port()
        self.workers = int(env.get(WORKERS, "2"))
        self.command = list(command or [str(project.python_bin() / "python"), str(project.SERVE)])
        self.env = {
            **os.environ,
            "PATH": f"{project.python_bin()}:{os.environ['PATH']}",
            "SAGEMAKER_BASE_DIR": str(self.base),
            "SAGEMAKER_BIND_TO_PORT": str(self.port),
            WORKERS: str(self.workers),
            "MXNET_BYOC_SERVE_HOST": "127.0.0.1",
            **env,
        }
        self.started = time.perf_counter()
        with open(self.log, "wb") as out:
            # Its own process group, so that stopping it reaches the workers even if the master is gone.
            self.process = subprocess.Popen(self.command, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def running(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_listening(self, timeout: float = 60) -> None:
        wait_until(lambda: net.listening(self.port), timeout, f"serve listening on port {self.port}",
                   process=self.process, details=self.tail)

    def loaded_pids(self) -> set[int]:
        """The workers that have logged their model loaded."""
        return {int(pid) for pid in LOADED.findall(self.output())}

    def wait_loaded(self, timeout: float = 120) -> None:
        """Until every worker has logged its model loaded (so any worker may take a request) and /ping is 200."""
        wait_until(lambda: len(self.loaded_pids()) >= self.workers, timeout,
                   f"{self.workers} workers with their model loaded", process=self.process, details=self.tail)
        if net.status(self.url("/ping"), timeout=10) != 200:
            raise self._fail("every worker loaded its model but /ping is not 200")

    def pids(self) -> list[int]:
        """The master and every process below it."""
        pids, queue = [], [self.process.pid]
        while queue:
            pid = queue.pop()
            pids.append(pid)
            for children in Path(f"/proc/{pid}/task").glob("*/children"):
                with contextlib.suppress(OSError):
                    queue.extend(int(c) for c in children.read_text().split())
        return pids

    def worker_pids(self) -> list[int]:
        """gunicorn's workers: the children of its master, which is `serve`'s child beside nginx (or the
        process itself, for a plain gunicorn command)."""
        children = _children(self.process.pid)
        masters = [pid for pid in children if _program(pid) != "nginx"]
        if len(masters) < len(children):  # serve's layout: nginx and gunicorn's master
            return sorted(pid for master in masters for pid in _children(master))
        return sorted(children)

    def pss_kib(self) -> int:
        """Proportional set size of the whole process tree."""
        total = 0
        for pid in self.pids():
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        return total

    def cpu_seconds(self) -> float:
        """User and system time of the tree, reaped workers included (cutime, cstime)."""
        total = 0
        for pid in self.pids():
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(f) for f in fields[11:15])
        return total / os.sysconf("SC_CLK_TCK")

    def holder_of(self, client_port: int) -> int | None:
        """The pid that has accepted the connection from our local port `client_port` (a worker now reading
        that request), or None while it waits in the listen queue."""
        inodes = {inode for local, remote, _, inode in _tcp_sockets() if (local, remote) == (self.port, client_port)}
        for pid in self.pids():
            with contextlib.suppress(OSError):
                for fd in Path(f"/proc/{pid}/fd").iterdir():
                    with contextlib.suppress(OSError):
                        if os.readlink(fd) in inodes:
                            return pid
        return None

    def connections_held(self, pid: int) -> int:
        """Sockets that process `pid` has open other than its listening socket: its client connections. The
        listening socket (which does not change) is looked up first, then the process's descriptors are read at
        once, so that connections opened and closed meanwhile do not escape the count."""
        listening = {inode for local, _, state, inode in _tcp_sockets() if local == self.port and state == "0A"}
        held = 0
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                held += target.startswith("socket:") and target not in listening
        return held

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM to the master, as SageMaker stops a container; SIGKILL to the group after `timeout`."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _program(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _tcp_sockets() -> Iterator[tuple[int, int, str, str]]:
    """(local port, remote port, state, `socket:[inode]`) of every TCP socket in /proc/net/tcp and tcp6
    (state 0A: listening)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for row in f.read().splitlines()[1:]:
                fields = row.split()
                yield _port(fields[1]), _port(fields[2]), fields[3], f"socket:[{fields[9]}]"


def _port(address: str) -> int:
    """The port of an address as /proc/net/tcp writes it (`0100007F:1F90`)."""
    return int(address.rsplit(":", 1)[1], 16)


class ContainerServer(_Server):
    """A detached `serve` container of `image` on the host network, on a port of its own, serving
    `model_dir` (mounted read-only at /opt/ml/model); its output is kept in `log`, when given, as it is
    removed. `extra`: more `docker run` options (`--memory`)."""

    def __init__(self, image: str, model_dir: Path, user: str | None = None, env: Mapping[str, str] | None = None,
                 log: Path | None = None, mounts: Mapping[Path, str] | None = None, extra: Sequence[str] = ()):
        self.log = log
        self.removed = False
        self.port = net.free_port()
        self.name = docker.container_name("serve")
        self.command = docker.docker_command(image, "serve", name=self.name, detach=True, user=user,
                                             mounts={Path(model_dir): "/opt/ml/model:ro", **(mounts or {})},
                                             env={"SAGEMAKER_BIND_TO_PORT": str(self.port), **(env or {})},
                                             extra=extra)
        self.started = time.perf_counter()
        shell.sh(*self.command)

    def state(self) -> dict:
        """`docker inspect`'s State: Status, ExitCode, ..."""
        return json.loads(shell.sh("docker", "inspect", "--format", "{{json .State}}", self.name).stdout)

    def running(self) -> bool:
        return self.state()["Status"] == "running"

    def output(self) -> str:
        result = shell.sh("docker", "logs", self.name, check=False)
        return result.stdout + result.stderr

    def stop(self, timeout: int = 30) -> int:
        """`docker stop` (SIGTERM, SIGKILL after `timeout`), as SageMaker stops it; the exit code. The
        container is removed."""
        try:
            shell.sh("docker", "stop", "--time", str(timeout), self.name, timeout=timeout + 30)
            return int(self.state()["ExitCode"])
        finally:
            self.remove()

    def remove(self) -> None:
        if self.removed:
            return
        self.removed = True
        if self.log is not None:
            self.log.write_text(self.output())
        docker.remove(self.name)


@contextlib.contextmanager
def serving(image: str, model_dir: Path, user: str | None = None, env: Mapping[str, str] | None = None,
            mounts: Mapping[Path, str] | None = None) -> Iterator[ContainerServer]:
    """A ready `serve` container for the block, removed after it; `env` and `mounts` as ContainerServer's."""
    server = ContainerServer(image, model_dir, user, env, mounts=mounts)
    try:
        server.wait_ready()
        yield server
    finally:
        server.remove()
