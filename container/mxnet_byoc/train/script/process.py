"""The user's script as a child process: its output streamed to the job's log as it comes, SIGTERM passed
on to it and to every process it started, and its last error kept for the failure reason.

The script runs in a process group of its own, so that a stop reaches its data-loader workers and any
shell pipeline too. Its stdout and stderr pass through pipes that this process copies to its own at once,
keeping the last 64 KB of each for the reason: the error is on stderr, except where a library the script
imports prints uncaught exceptions through rich on stdout (the SageMaker Python SDK 2 does).
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
# rich's form of the same: frames in a box whose title is the header, then `Type: message` below it.
_RICH_HEADER = re.compile(r"^\s*╭─+ Traceback \(most recent call last\) ─+╮\s*$")
_RICH_BOX_LINE = re.compile(r"^\s*[│╭╰]|^\s*$")


@dataclass
class Outcome:
    returncode: int  # as a shell reports it: 128 + N for a script killed by signal N
    signal: int | None  # the signal that killed the script, if one did
    stopped_by: str | None  # "SIGTERM" or "SIGINT" when a stop was passed on to the script
    stderr_tail: str
    aborted: str | None = None  # why abort() ended the script (a dead peer), if it did
    stdout_tail: str = ""


class ScriptProcess:
    """Start with start(), end with wait(); stop() and abort() may come from signal handlers or threads."""

    def __init__(self, command: list[str], cwd: str, env: dict[str, str]):
        self.command, self.cwd, self.env = command, cwd, env
        self.proc: subprocess.Popen | None = None
        self._tails = {1: _Tail(), 2: _Tail()}  # by the file descriptor the output goes on to
        self._pumps: list[threading.Thread] = []
        self.stopped_by: str | None = None
        self.aborted: str | None = None
        self.exited = False

    def start(self) -> None:
        self.proc = subprocess.Popen(self.command, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                                     preexec_fn=_die_with_parent)
        for pipe, target in ((self.proc.stdout, 1), (self.proc.stderr, 2)):
            pump = threading.Thread(target=_copy, args=(pipe.fileno(), target, self._tails[target]),
                                    name=f"script-output-{target}", daemon=True)
            pump.start()
            self._pumps.append(pump)

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
        for pump in self._pumps:
            # A grandchild that left the group may still hold a pipe open: do not wait for it.
            pump.join(timeout=5)
        killed = -code if code < 0 else None
        return Outcome(returncode=128 + killed if killed else code, signal=killed, stopped_by=self.stopped_by,
                       stderr_tail=self._tails[2].text(), aborted=self.aborted, stdout_tail=self._tails[1].text())


class _Tail:
    """The last TAIL_BYTES (or a little more) of a stream, in the chunks it came in."""

    def __init__(self) -> None:
        self.chunks: deque[bytes] = deque()
        self.size = 0

    def add(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.size += len(chunk)
        while self.size - len(self.chunks[0]) >= TAIL_BYTES:
            self.size -= len(self.chunks.popleft())

    def text(self) -> str:
        return b"".join(self.chunks)[-TAIL_BYTES:].decode("utf-8", "replace")


def _copy(source: int, target: int, tail: _Tail) -> None:
    """The script's output on `source` to this process's `target` line by line as it comes, its tail kept.

    Whole lines only (a line ends at \n, or at \r for a progress bar): the two streams meet in one log, and
    a part of a stderr line written into the middle of a stdout line would break both (a metric line, say;
    unbuffered Python writes a printed line and its newline apart)."""
    pending = b""
    while True:
        try:
            chunk = os.read(source, 65536)
        except OSError:
            chunk = b""
        if not chunk:
            _write(target, pending)
            return
        tail.add(chunk)
        pending += chunk
        end = max(pending.rfind(b"\n"), pending.rfind(b"\r")) + 1
        if end == 0 and len(pending) >= TAIL_BYTES:  # a line without end: pass it on in pieces
            end = len(pending)
        _write(target, pending[:end])
        pending = pending[end:]


def _write(target: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(target, view):]
        except OSError:
            return  # our own output is gone: the tail is kept anyway


def last_rich_error(output: str) -> tuple[str, str]:
    """The error line and the box of the last traceback that rich printed in `output` (empty when none)."""
    lines = output.replace("\r\n", "\n").split("\n")
    starts = [i for i, line in enumerate(lines) if _RICH_HEADER.match(line)]
    if starts:
        for i in range(starts[-1] + 1, len(lines)):
            if not _RICH_BOX_LINE.match(lines[i]):
                return lines[i].strip(), "\n".join(lines[starts[-1]:i + 1]).rstrip()
    return "", ""


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
