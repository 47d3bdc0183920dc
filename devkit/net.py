"""Free ports and plain HTTP to 127.0.0.1 through urllib (byoctl has no `requests`), never through a proxy."""

from __future__ import annotations

import http.client
import socket
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence

# The servers here listen on 127.0.0.1: an HTTP(S)_PROXY of the environment must not get these requests.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    """A TCP port nothing listens on now (the kernel's choice)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_pair(hosts: Sequence[str] = ("127.0.0.1",)) -> int:
    """A port free on every address of `hosts`, with the next port free too (a parameter server's scheduler
    and the heartbeats beside it, on loopback "hosts" such as 127.0.0.2)."""
    for _ in range(100):
        port = free_port()
        if all(_bindable(host, p) for host in hosts for p in (port, port + 1)):
            return port
    raise OSError("found no two free ports in a row")


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def listening(port: int, host: str = "127.0.0.1") -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


def request(url: str, body: bytes | None = None, headers: Mapping[str, str] | None = None,
            timeout: float = 30) -> tuple[int, bytes]:
    """(status, body) of a GET, or of a POST when `body` is given; an HTTP error status is returned, not
    raised. OSError when no answer comes (refused, reset, timed out)."""
    req = urllib.request.Request(url, data=body, headers=dict(headers or {}), method="GET" if body is None else "POST")
    try:
        with _OPENER.open(req, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except http.client.HTTPException as e:  # a connection closed mid-answer
        raise OSError(f"{url}: {e!r}") from e


def status(url: str, timeout: float = 2) -> int | None:
    """The status of GET `url`, or None when nothing answers."""
    try:
        return request(url, timeout=timeout)[0]
    except OSError:
        return None
