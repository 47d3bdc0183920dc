"""The user's script as a child process: its output streamed to the job's log as it comes, SIGTERM passed
on to it and to every process it started, and its last error kept for the failure reason.

The script runs in a process group of its own, so that a stop reaches its data-loader workers and any
shell pipeline too. Its stdout is the job's stdout itself (nothing in between); its stderr passes through
a pipe that this process copies to its own stderr at once, keeping the last 64 KB for the reason.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from collections import deque
from dataclasses import dataclass

# `train` killed with SIGKILL (outside a container) must not leave the script running, as it leaves no server.
from ..distributed import _die_with_parent

TAIL_BYTES = 64 * 1024
# The header of a Python traceback, and the line that ends it: the exception's type and message.
TRACEBACK_HEADER = "Traceback (most recent call last):"
_FRAME_LINE = re.compile(r"^\s|^\s*$")  # frames and source lines are indented


@dataclass
class Outcome:
    returncode: int  # as a shell reports it: 128 + N for a script killed by signal N
    signal: int | None  # the signal that killed the script, if one did
    stopped_by: str | None  # "SIGTERM" or "SIGINT" when a stop was passed on to the script
    stderr_tail: str
    aborted: str | None = None  # why abort() ended the script (a dead peer), if it did


class ScriptProcess:
    """Start with start(), end with wait(); stop() and abort() may come from signal handlers or threads."""

    def __init__(self, command: list[str], cwd: str, env: dict[str, str]):
        self.command, self.cwd, self.env = command, cwd, env
        self.proc: subprocess.Popen | None = None
        self._tail: deque[bytes] = deque()
        self._tail_size = 0
        self._pump: threading.Thread | None = None
        self.stopped_by: str | None = None
        self.aborted: str | None = None
        self.exited = False

    def start(self) -> None:
        self.proc = subprocess.Popen(self.command, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True,
                                     preexec_fn=_die_with_parent)
        self._pump = threading.Thread(target=self._copy_stderr, name="script-stderr", daemon=True)
        self._pump.start()

    def _copy_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        fd = self.proc.stderr.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            view = memoryview(chunk)
            while view:
                try:
                    view = view[os.write(2, view):]
                except OSError:
                    break  # our stderr is gone: keep the tail anyway
            self._tail.append(chunk)
            self._tail_size += len(chunk)
            while self._tail_size - len(self._tail[0]) >= TAIL_BYTES:
                self._tail_size -= len(self._tail.popleft())

    def signal_group(self, signum: int) -> None:
        """The signal to the script and every process in its group (its children, unless they left it)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, signum: int) -> bool:
        """A stop request (StopTrainingJob, spot interruption): the script decides how to end. False when
        the script had ended already: its outcome stands (SDK local mode stops every host as soon as the
        first one's container exits, while the others are finishing)."""
        if self.exited or self._ended_unreaped():
            return False
        self.stopped_by = self.stopped_by or signal.Signals(signum).name
        self.signal_group(signum)
        return True

    def _ended_unreaped(self) -> bool:
        """The script has ended but wait() has not collected it yet (the signal came just then); looked at
        without collecting it, so that wait() still gets its exit code."""
        try:
            return os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except (ChildProcessError, AttributeError):
            return self.proc is None or self.proc.returncode is not None

    def abort(self, reason: str) -> None:
        """The job cannot go on (a peer died): end the script at once; it may be stuck in a push that
        never returns, where it would not act on SIGTERM."""
        self.aborted = self.aborted or reason
        self.signal_group(signal.SIGKILL)

    def wait(self) -> Outcome:
        assert self.proc is not None
        code = self.proc.wait()
        self.exited = True
        # What is left of the group after the script itself ended (children it did not wait for) goes too.
        self.signal_group(signal.SIGKILL)
        if self._pump is not None:
            # A grandchild that left the group may still hold the pipe open: do not wait for it.
            self._pump.join(timeout=5)
        tail = b"".join(self._tail)[-TAIL_BYTES:].decode("utf-8", "replace")
        killed = -code if code < 0 else None
        return Outcome(returncode=128 + killed if killed else code, signal=killed, stopped_by=self.stopped_by,
                       stderr_tail=tail, aborted=self.aborted)


def last_error(stderr: str) -> tuple[str, str]:
    """The script's last error line and the traceback it ends (empty when there is none).

    A Python traceback ends in `Type: message` at the start of a line; the last traceback in the output
    counts (a chained exception's last part is the one that ended the script). MXNet's errors carry the
    C++ stack in their message (`MXNetError: Traceback ...`, frames, then the reason): their last line is
    the reason. Without a traceback, the last non-empty line of stderr is the error (argparse's usage
    error, a shell's message)."""
    lines = stderr.replace("\r\n", "\n").split("\n")
    starts = [i for i, line in enumerate(lines) if line.strip() == TRACEBACK_HEADER]
    if starts:
        start = starts[-1]
        for i in range(start + 1, len(lines)):
            if not _FRAME_LINE.match(lines[i]):
                block = "\n".join(lines[start:]).rstrip()
                error = lines[i].strip()
                kind, _, message = error.partition(": ")
                if message.strip() == TRACEBACK_HEADER:
                    reason = next((line.strip() for line in reversed(lines[i + 1:]) if line.strip()), message)
                    error = f"{kind}: {reason}"
                return error, block
    # A progress bar redraws its line with \r: its last state counts.
    states = [part.strip() for line in lines for part in line.split("\r")]
    return next((text for text in reversed(states) if text), ""), ""
