"""`serve`'s two servers as children of one process (PID 1 in the image): gunicorn with the model, then nginx in
front of it (nginx.py), started, stopped and watched here.

- SIGTERM (SageMaker's stop, `docker stop`) stops them in order: nginx first, gracefully (it stops accepting,
  closes idle connections, and waits for the requests in flight, which gunicorn is still there to answer),
  then gunicorn, whose workers are idle by then. Both within settings.GRACEFUL_TIMEOUT_S, below the 30 s
  after which SageMaker sends SIGKILL. SIGINT (Ctrl-C) stops both at once.
- Either one exiting on its own ends `serve` with status 1, after stopping the other gracefully. Their
  workers are already replaced by their own masters (gunicorn replaces a dead worker, nginx likewise), so a
  master that exits is a fault in the server itself: the container exits and SageMaker (or docker's restart
  policy) replaces it, rather than a restart loop hiding the fault behind a /ping that comes and goes.
- A master that dies leaves workers that would go on (nginx's keep the port open): this process adopts orphans (as
  PID 1 does in any case; elsewhere as a child subreaper) and kills them. A stop that has not finished
  KILL_AFTER_S after it began ends with SIGKILL to every process below this one.
- Any other child that exits is reaped.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from . import settings

HANDLED = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}
PR_SET_CHILD_SUBREAPER = 36  # prctl(2): orphans below this process are reparented to it
KILL_AFTER_S = settings.GRACEFUL_TIMEOUT_S + 3  # a stop still unfinished then ends with SIGKILL


@dataclass
class Child:
    name: str
    pid: int
    graceful: signal.Signals  # the signal that stops it after its requests in flight
    quick: signal.Signals  # the signal that stops it at once
    status: int | None = None  # os.waitpid's, once it has exited
    told: signal.Signals | None = None  # the stop signal it was sent last

    @property
    def running(self) -> bool:
        return self.status is None

    def stop(self, quick: bool) -> None:
        """Send its stop signal, once (a graceful stop may still become a quick one)."""
        sig = self.quick if quick else self.graceful
        if self.told not in (sig, self.quick):
            self.told = sig
            self.signal(sig)

    def signal(self, sig: signal.Signals) -> None:
        if self.running:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def describe_exit(self) -> str:
        assert self.status is not None
        if os.WIFSIGNALED(self.status):
            return f"{self.name} was killed by {signal.Signals(os.WTERMSIG(self.status)).name}"
        return f"{self.name} exited with status {os.waitstatus_to_exitcode(self.status)}"


def run(model_server: Callable[[], int], front_end: list[str], front_end_env: dict[str, str]) -> int:
    """Start `model_server` (a function run in a forked child: gunicorn's master) and the `front_end` command
    (nginx), and supervise both until they have stopped; the exit status of `serve`."""
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)  # received by sigtimedwait below, never by a handler
    _adopt_orphans()
    gunicorn = Child("gunicorn", _fork(model_server, mask), signal.SIGTERM, signal.SIGINT)
    try:
        nginx_pid = os.posix_spawn(front_end[0], front_end, front_end_env, setsigmask=mask)
    except OSError as e:
        log(f"nginx could not start: {e}")
        gunicorn.signal(signal.SIGINT)
        os.waitpid(gunicorn.pid, 0)
        return 1
    nginx = Child("nginx", nginx_pid, signal.SIGQUIT, signal.SIGTERM)
    return Supervisor(nginx, gunicorn).wait()


class Supervisor:
    def __init__(self, nginx: Child, gunicorn: Child):
        self.nginx, self.gunicorn = nginx, gunicorn
        self.stopping = False
        self.failed = False
        self.deadline: float | None = None

    def wait(self) -> int:
        while self.nginx.running or self.gunicorn.running:
            timeout = None if self.deadline is None else max(0.0, self.deadline - time.monotonic())
            received = signal.sigtimedwait(HANDLED, timeout) if timeout is not None else signal.sigwaitinfo(HANDLED)
            if received is None:  # the deadline passed
                for pid in _below(os.getpid()):
                    _kill(pid)
                self.deadline = None
                continue
            if received.si_signo == signal.SIGCHLD:
                self._reap()
            elif received.si_signo == signal.SIGTERM:
                self._stop(quick=False)
            else:
                self._stop(quick=True)
        for pid in _below(os.getpid()):  # anything left behind, reaped before serve exits
            _kill(pid)
        while True:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                return 1 if self.failed else 0

    def _stop(self, quick: bool) -> None:
        self.nginx.stop(quick)
        if quick:
            self.gunicorn.stop(quick)  # else once nginx has finished (_exited)
        self.stopping = True
        if self.deadline is None:
            self.deadline = time.monotonic() + KILL_AFTER_S

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for child in (self.nginx, self.gunicorn):
                if child.pid == pid:
                    child.status = status
                    self._exited(child)

    def _exited(self, child: Child) -> None:
        if not self.stopping:
            self.failed = True
            log(f"{child.describe_exit()}; stopping serve")
            self._stop(quick=False)
        # The workers it left behind are this process's children now.
        survivor = self.gunicorn if child is self.nginx else self.nginx
        for pid in _children(os.getpid()):
            if pid != survivor.pid:
                _kill(pid)
        # nginx gone: no request can reach gunicorn any more. gunicorn gone: nginx can only answer 502.
        survivor.stop(quick=False)


def _fork(main: Callable[[], int], mask: set[signal.Signals]) -> int:
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        code = main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: BLE001  the child must never return into the supervisor's code
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _adopt_orphans() -> None:
    """Become the parent of orphans below this process (Linux's child subreaper); where prctl is missing, orphans
    go to PID 1 instead, and only the masters are stopped."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(child) for child in f.read().split()]
    except OSError:
        return []


def _below(pid: int) -> list[int]:
    """Every process below `pid`, deepest first."""
    found = []
    for child in _children(pid):
        found += [*_below(child), child]
    return found


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def log(message: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %z")
    print(f"[{stamp}] [{os.getpid()}] [INFO] serve: {message}", file=sys.stderr, flush=True)
