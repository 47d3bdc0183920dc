"""What the manager and the workers of a multi-model server share, in one folder (`serve`'s run folder):

- `registry.json`, written by the manager only (atomically: a new file renamed over the old): every model it has
  been asked to load, with its URL, a generation (a new one for every load, so that a worker never mistakes a
  model reloaded under the same name for the copy it holds) and its phase: `prepare` (its requirements.txt is
  being installed; no worker loads it yet), `probe` (one worker, `probe`, loads it first, to measure it), `all`
  (every worker loads it), `ready` (every worker has it; the load was answered 200).
- `worker-<pid>.sock`: each worker's datagram socket. The manager sends `sync` to every worker after changing the
  registry; the worker reads the registry and loads or unloads to match it.
- `manager.sock`: the manager's datagram socket. A worker sends a `Report` (JSON) for each model it has loaded,
  failed to load or unloaded, and one when its first pass over the registry is done.

Datagrams on unix sockets arrive whole and in order, and need no connection: a worker that is gone makes a send
fail at once (the manager then forgets it), and no one waits on a socket for anything but its own messages.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path

REGISTRY_FILE = "registry.json"
MANAGER_SOCKET = "manager.sock"
WORKER_SOCKET = "worker-{pid}.sock"
SYNC = b"sync"
MAX_DATAGRAM = 65536

PREPARE, PROBE, ALL, READY = "prepare", "probe", "all", "ready"
LOADED, FAILED, UNLOADED, STARTED = "loaded", "failed", "unloaded", "started"


@dataclass(frozen=True)
class Entry:
    url: str
    generation: int
    phase: str
    probe: int | None = None  # the worker that loads it first, in phase `probe`

    def wanted_by(self, pid: int) -> bool:
        return self.phase in (ALL, READY) or (self.phase == PROBE and self.probe == pid)


@dataclass
class Registry:
    models: dict[str, Entry] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps({"models": {name: asdict(e) for name, e in self.models.items()}}).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Registry:
        document = json.loads(data)
        return cls({name: Entry(**e) for name, e in document["models"].items()})


def read_registry(folder: Path) -> Registry:
    try:
        return Registry.from_json((folder / REGISTRY_FILE).read_bytes())
    except FileNotFoundError:
        return Registry()


def write_registry(folder: Path, registry: Registry) -> None:
    temporary = folder / f".{REGISTRY_FILE}.{os.getpid()}"
    temporary.write_bytes(registry.to_json())
    os.replace(temporary, folder / REGISTRY_FILE)


@dataclass(frozen=True)
class Report:
    """A worker's word on one model (`state` loaded, failed or unloaded), or on itself (`started`: its first
    pass over the registry is done)."""

    pid: int
    state: str
    name: str = ""
    generation: int = 0
    reason: str = ""
    status: int = 0  # the HTTP status a failed load is answered with
    bytes: int = 0  # how much the load grew the worker's memory

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def decode(cls, data: bytes) -> Report:
        return cls(**json.loads(data))


def datagram_socket(path: Path) -> socket.socket:
    """A datagram socket bound at `path` (a stale file of a dead process there is replaced)."""
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    return sock


def send(sock: socket.socket, path: Path, message: bytes) -> bool:
    """True when the message was delivered; False when no one is bound at `path` any more (or its queue stayed
    full for the socket's timeout)."""
    try:
        sock.sendto(message, str(path))
        return True
    except (FileNotFoundError, ConnectionRefusedError, TimeoutError, BlockingIOError):
        return False


def sender(timeout_s: float = 5.0) -> socket.socket:
    """An unbound datagram socket to send with."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.settimeout(timeout_s)
    return sock


def worker_socket(folder: Path, pid: int) -> Path:
    return folder / WORKER_SOCKET.format(pid=pid)
