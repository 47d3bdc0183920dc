"""`serve`'s supervision of nginx and gunicorn (mxnet_byoc.serve.supervisor), with stand-ins for both that write
down every signal they get: the order of a graceful stop, Ctrl-C, either one exiting on its own, a child that
will not stop. The supervisor runs in a process of its own (it blocks signals and forks)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from devkit.waiting import wait_until

# nginx's stand-in: writes down each signal; exits 0 a moment after SIGQUIT (its requests in flight finishing),
# at once on SIGTERM or SIGINT, with status 3 on SIGUSR1 (nginx failing by itself); SIGUSR2: ignore the others.
FRONT_END = """
import os, signal, sys, time
log = sys.argv[1]
def note(text):
    with open(log, "a") as f:
        f.write(text + "\\n")
stubborn = False
def on(sig, frame):
    global stubborn
    note(f"nginx {signal.Signals(sig).name}")
    if sig == signal.SIGUSR2:
        stubborn = True
        return
    if stubborn:
        return
    if sig == signal.SIGQUIT:
        time.sleep(0.3)
    note("nginx exits")
    os._exit(3 if sig == signal.SIGUSR1 else 0)
for sig in (signal.SIGQUIT, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2):
    signal.signal(sig, on)
note(f"nginx started {os.getpid()}")
while True:
    signal.pause()
"""

# The supervisor with gunicorn's stand-in (a function run in its forked child, as gunicorn's master is), which has a
# worker of its own and leaves it behind when it exits.
SUPERVISED = """
import os, signal, sys
from mxnet_byoc.serve import supervisor
log, front_end, kill_after = sys.argv[1], sys.argv[2], float(sys.argv[3])
supervisor.KILL_AFTER_S = kill_after
def note(text):
    with open(log, "a") as f:
        f.write(text + "\\n")
def model_server():
    def on(sig, frame):
        note(f"gunicorn {signal.Signals(sig).name}")
        note("gunicorn exits")
        os._exit(0)
    if os.fork() == 0:
        note(f"worker started {os.getpid()}")
        while True:
            signal.pause()
    signal.signal(signal.SIGTERM, on)
    signal.signal(signal.SIGINT, on)
    note(f"gunicorn started {os.getpid()}")
    while True:
        signal.pause()
sys.exit(supervisor.run(model_server, [sys.executable, "-c", front_end, log], dict(os.environ)))
"""


class Supervised:
    def __init__(self, tmp_path: Path, kill_after: float = 30):
        self.log = tmp_path / "signals.log"
        self.log.touch()
        self.process = subprocess.Popen([sys.executable, "-c", SUPERVISED, str(self.log), FRONT_END, str(kill_after)],
                                        stderr=subprocess.PIPE, text=True,
                                        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        wait_until(lambda: len(self.started()) == 3, what="both children and the worker started")

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines()

    def started(self) -> dict[str, int]:
        return {line.split()[0]: int(line.split()[2]) for line in self.lines() if " started " in line}

    def events(self) -> list[str]:
        return [line for line in self.lines() if " started " not in line]

    def finish(self) -> tuple[int, str]:
        try:
            stderr = self.process.communicate(timeout=30)[1]
        finally:
            if self.process.poll() is None:
                self.process.kill()
        return self.process.returncode, stderr


@pytest.fixture
def supervised(tmp_path):
    started = []

    def start(**kwargs) -> Supervised:
        started.append(Supervised(tmp_path, **kwargs))
        return started[-1]

    yield start
    for one in started:
        if one.process.poll() is None:
            one.process.kill()
        for pid in one.started().values():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_sigterm_stops_nginx_first_then_gunicorn_once_nginx_has_finished(supervised):
    one = supervised()
    one.process.send_signal(signal.SIGTERM)
    code, stderr = one.finish()
    assert code == 0, stderr
    assert one.events() == ["nginx SIGQUIT", "nginx exits", "gunicorn SIGTERM", "gunicorn exits"]


def test_sigint_stops_both_at_once(supervised):
    one = supervised()
    one.process.send_signal(signal.SIGINT)
    code, stderr = one.finish()
    assert code == 0, stderr
    assert sorted(one.events()) == ["gunicorn SIGINT", "gunicorn exits", "nginx SIGTERM", "nginx exits"]


def test_nginx_exiting_by_itself_stops_gunicorn_and_serve_fails(supervised):
    one = supervised()
    os.kill(one.started()["nginx"], signal.SIGUSR1)
    code, stderr = one.finish()
    assert code == 1
    assert one.events() == ["nginx SIGUSR1", "nginx exits", "gunicorn SIGTERM", "gunicorn exits"]
    assert "serve: nginx exited with status 3; stopping serve" in stderr


def test_gunicorn_dying_stops_nginx_gracefully_and_serve_fails(supervised):
    one = supervised()
    os.kill(one.started()["gunicorn"], signal.SIGKILL)
    code, stderr = one.finish()
    assert code == 1
    assert one.events() == ["nginx SIGQUIT", "nginx exits"]
    assert "serve: gunicorn was killed by SIGKILL; stopping serve" in stderr
    with pytest.raises(ProcessLookupError):  # the worker it left behind was killed
        os.kill(one.started()["worker"], 0)


def test_a_stop_unfinished_at_the_deadline_ends_with_sigkill(supervised):
    one = supervised(kill_after=1)
    os.kill(one.started()["nginx"], signal.SIGUSR2)  # from now on it ignores SIGQUIT
    wait_until(lambda: "nginx SIGUSR2" in one.events(), what="the stand-in to turn stubborn")
    one.process.send_signal(signal.SIGTERM)
    code, stderr = one.finish()
    assert code == 0, stderr
    assert one.events() == ["nginx SIGUSR2", "nginx SIGQUIT"]  # then SIGKILL to both, at the deadline
    for pid in one.started().values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
