"""Waiting for something that can be observed (a log line, an answer, a file), never for a fixed time.

The bound on each wait is generous: reaching it means the event never came, not that it came late."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

from . import KitError

T = TypeVar("T")
POLL_S = 0.02


def wait_until(check: Callable[[], T], timeout: float = 60, what: str = "the condition",
               process: subprocess.Popen | None = None, details: Callable[[], str] = lambda: "",
               interval: float = POLL_S) -> T:
    """The first true value `check()` returns. KitError naming `what` (and `details()`, such as a log's
    tail) when `timeout` seconds pass first, or as soon as `process`, when given, has exited."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if process is not None and process.poll() is not None:
            raise KitError(f"exited with {process.returncode} while waiting for {what}\n{details()}")
        if time.monotonic() > deadline:
            raise KitError(f"{what}: not within {timeout:g} s\n{details()}")
        time.sleep(interval)
