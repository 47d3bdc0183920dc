"""Horovod over MPI in script mode (`sagemaker_mpi_enabled`), as AWS's training toolkit runs it.

The first host of the distribution runs `mpirun` over every host, `processes_per_host` ranks each
(`sagemaker_mpi_num_of_processes_per_host`, default one per GPU, else one; `sagemaker_mpi_num_processes`
overrides the total), with the toolkit's MPI options, then `sagemaker_mpi_custom_mpi_options`, every `SM_*`
variable exported to every rank, and the script run as `python -m mpi4py <entry point> <arguments>` (so an
uncaught exception in one rank aborts them all instead of leaving the others waiting in a collective).

With several hosts, mpirun reaches the others over SSH: every host starts sshd (`/usr/sbin/sshd -D`, a child
of `train` that dies with it) once the user's code and its requirements are installed; the first host waits
until each other host accepts its key, launches, and when mpirun has ended sends each of them the job's exit
code and failure reason (over the same SSH). The other hosts exit with that code and reason, or fail when the
first host stops answering. One host needs no SSH at all: mpirun starts the ranks itself.

A stop (SIGTERM) goes to mpirun alone, which passes it on to every rank on every host, then ends them.
mpirun's `--tag-output` prefixes each line with `[job,rank]<stream>:`; the failure reason is the error line
of the first rank that failed (the one mpirun names, else the first with a traceback).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import ReasonError
from .. import environment
from ..distributed import _die_with_parent
from . import process, smenv

log = logging.getLogger("mxnet_byoc.script.mpi")

MPI_ENABLED = smenv.MPI
PROCESSES_PER_HOST = "sagemaker_mpi_num_of_processes_per_host"
NUM_PROCESSES = "sagemaker_mpi_num_processes"
CUSTOM_OPTIONS = "sagemaker_mpi_custom_mpi_options"
NETWORK_INTERFACE = "sagemaker_network_interface_name"

SSHD = "/usr/sbin/sshd"
SSH_PORT = 22
# Where the first host leaves the job's outcome on the others (written over SSH, read by `train` there).
STATUS_FILE = Path("/run/mxnet-byoc/mpi-status.json")
# Written by another host once it has acted on the outcome (its success or failure file, its log line).
TAKEN_FILE = Path("/run/mxnet-byoc/mpi-status.taken")
DELIVERED = "mpi-status-delivered"
# Hosts come up at different times (image pull, requirements to install): each may take this long to start
# its sshd. Once the first host has answered, it may stop answering for `_peer_timeout` seconds at most.
STARTUP_TIMEOUT = 900
DEFAULT_PEER_TIMEOUT = 60
PEER_TIMEOUT = "_peer_timeout"
# After a stop, how long another host waits for the first one's outcome before it ends (SageMaker kills
# the containers 120 s after SIGTERM).
STOP_GRACE = 100
# How long the first host waits for another to act on the outcome before it ends: SDK local mode stops every
# container as soon as the first one exits, which would cut the others' last lines.
FINAL_WAIT = 30
POLL_INTERVAL = 0.5
_TAG = re.compile(r"\[(\d+),(\d+)\]<(?:stdout|stderr|stddiag)>:")
# mpirun's own account of which rank ended the job.
_FIRST_FAILED = re.compile(r"Process name: \[\[\d+,\d+\],(\d+)\]")
_ABORTED_ON = re.compile(r"MPI_ABORT was invoked on rank (\d+)")


class MpiError(ReasonError):
    """The MPI job cannot start or its hosts lost each other; the message is the job's failure reason."""


def requested(env: smenv.ScriptEnv) -> bool:
    return smenv.switched_on(env.additional_framework_parameters.get(MPI_ENABLED, False))


@dataclass
class Settings:
    """Who runs what: read from the job's configuration (`sagemaker_mpi_*`, resourceconfig.json)."""

    hosts: list[str]
    current_host: str
    processes_per_host: int
    num_processes: int | None
    custom_options: str
    network_interface: str
    peer_timeout: int

    @property
    def master(self) -> str:
        return self.hosts[0]

    @property
    def is_master(self) -> bool:
        return self.current_host == self.master

    @property
    def workers(self) -> list[str]:
        return [h for h in self.hosts if h != self.master]

    @property
    def total_processes(self) -> int:
        return self.num_processes or self.processes_per_host * len(self.hosts)

    @classmethod
    def from_env(cls, env: smenv.ScriptEnv) -> Settings:
        framework = env.additional_framework_parameters
        per_host = _positive(framework, PROCESSES_PER_HOST, env.num_gpus or 1)
        total = _positive(framework, NUM_PROCESSES, None)
        hosts = env.distribution_hosts or env.hosts
        if env.current_host not in hosts:
            raise MpiError(f"{env.current_host} is not among the MPI job's hosts {hosts} "
                           f"({smenv.DISTRIBUTION_GROUPS} leaves it out): nothing to run here")
        interface = str(framework.get(NETWORK_INTERFACE) or env.network_interface_name)
        return cls(hosts=list(hosts), current_host=env.current_host, processes_per_host=per_host,
                   num_processes=total, custom_options=str(framework.get(CUSTOM_OPTIONS) or ""),
                   network_interface=interface,
                   peer_timeout=_positive(env.hyperparameters, PEER_TIMEOUT, DEFAULT_PEER_TIMEOUT))


def _positive(values: Mapping[str, Any], name: str, default: Any) -> Any:
    if values.get(name) in (None, ""):
        return default
    raw = values[name]
    try:
        value = 0 if isinstance(raw, (bool, float)) else int(raw)  # JSON-decoded: 2, or "2" from str()
    except (TypeError, ValueError):
        value = 0
    if value <= 0:
        raise MpiError(f"{name} must be a positive whole number, not {values[name]!r}")
    return value


def _custom_options(text: str) -> tuple[str, list[str]]:
    """NCCL_DEBUG's level (`--NCCL_DEBUG WARN`, the toolkit's one known option) and the rest as given."""
    try:
        words = shlex.split(text)
    except ValueError as e:
        raise MpiError(f"{CUSTOM_OPTIONS} cannot be split into words: {e} ({text!r})") from e
    level, rest, i = "INFO", [], 0
    while i < len(words):
        word = words[i]
        if word == "--NCCL_DEBUG" and i + 1 < len(words):
            level, i = words[i + 1], i + 2
            continue
        if word.startswith("--NCCL_DEBUG="):
            level = word.split("=", 1)[1]
        else:
            rest.append(word)
        i += 1
    return level, rest


def mpirun_command(settings: Settings, script: list[str], variables: Mapping[str, str],
                   interfaces: Callable[[], set[str]] | None = None) -> list[str]:
    """The toolkit's mpirun line around `script` (the command `train` would run alone). `variables` is the
    environment mpirun starts with: each SM_* name (and the few others a script reads) is exported."""
    hosts = settings.hosts
    per_host = settings.processes_per_host
    if len(hosts) == 1:
        # No name service and no SSH on one host: mpirun starts the ranks itself.
        host_list = [f"localhost:{per_host}"]
    else:
        host_list = [h if per_host == 1 else f"{h}:{per_host}" for h in hosts]
    nccl_debug, custom = _custom_options(settings.custom_options)
    iface = settings.network_interface
    cmd = ["mpirun", "--host", ",".join(host_list), "-np", str(settings.total_processes),
           "--allow-run-as-root", "--display-map", "--tag-output"]
    present = (interfaces or _interfaces)()
    if iface in present:
        cmd += ["-mca", "btl_tcp_if_include", iface, "-mca", "oob_tcp_if_include", iface]
    elif len(hosts) > 1:
        raise MpiError(f"the network interface {iface!r} (sagemaker_network_interface_name or resourceconfig.json's "
                       f"network_interface_name) is not on this host; it has: {', '.join(sorted(present))}")
    cmd += ["-mca", "plm_rsh_no_tree_spawn", "1", "-bind-to", "none", "-map-by", "slot",
            "-mca", "pml", "ob1", "-mca", "btl", "^openib", "-mca", "orte_abort_on_non_zero_status", "1",
            "-mca", "btl_vader_single_copy_mechanism", "none",
            "-x", "NCCL_MIN_NRINGS=4", "-x", f"NCCL_SOCKET_IFNAME={iface}", "-x", f"NCCL_DEBUG={nccl_debug}"]
    exported = ["LD_LIBRARY_PATH", "PATH", "PYTHONPATH", "PYTHONUNBUFFERED", "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION",
                "TRAINING_JOB_NAME", "TRAINING_JOB_ARN", "SAGEMAKER_BASE_DIR", "CURRENT_HOST",
                "SAGEMAKER_JOB_NAME", "SAGEMAKER_REGION"]
    exported += sorted(name for name in variables if name.startswith("SM_"))
    for name in exported:
        if name in variables:
            cmd += ["-x", name]
    cmd += custom
    return cmd + with_mpi4py(script)


def with_mpi4py(script: list[str]) -> list[str]:
    """`python -- file.py args` becomes `python -m mpi4py file.py args`, `python -m pkg` becomes
    `python -m mpi4py -m pkg`; a shell script runs as it is."""
    if len(script) >= 2 and script[1] == "--":
        return [script[0], "-m", "mpi4py", *script[2:]]
    if len(script) >= 2 and script[1] == "-m":
        return [script[0], "-m", "mpi4py", *script[1:]]
    return list(script)


def _interfaces() -> set[str]:
    return {name for _, name in socket.if_nameindex()}


# --- the failure reason ------------------------------------------------------------------------------

def untag(output: str) -> tuple[dict[int, list[str]], list[str]]:
    """Each rank's lines (tags removed) and mpirun's own lines, in order. mpirun tags each piece it reads, so
    a line the script wrote in several writes carries several tags; a line is its first tag's rank's."""
    ranks: dict[int, list[str]] = {}
    own: list[str] = []
    for line in output.replace("\r\n", "\n").split("\n"):
        m = _TAG.match(line)
        if m:
            ranks.setdefault(int(m.group(2)), []).append(_TAG.sub("", line))
        else:
            own.append(line)
    return ranks, own


def failing_rank_output(stderr: str) -> str:
    """The stderr of the rank that ended the job (mpirun names it), else of the first rank that printed a
    traceback, else every rank's and mpirun's lines untagged: what process.last_error reads the reason from."""
    ranks, own = untag(stderr)
    named = _FIRST_FAILED.search(stderr) or _ABORTED_ON.search(stderr)
    candidates = [int(named.group(1))] if named else []
    candidates += [r for r in ranks if any(process.TRACEBACK_HEADER in line for line in ranks[r])]
    for rank in candidates:
        lines = ranks.get(rank, [])
        if process.last_error("\n".join(lines))[0]:
            return "\n".join(lines)
    return "\n".join([*(line for r in sorted(ranks) for line in ranks[r]), *own])


class MpirunProcess(process.ScriptProcess):
    """mpirun as the script: a stop goes to mpirun alone (it passes it on to every rank, here and on the
    other hosts, then ends them); what is left of the group once mpirun has ended is killed as before."""

    def signal_group(self, signum: int) -> None:
        if signum == signal.SIGKILL or self.proc is None:
            super().signal_group(signum)
            return
        try:
            os.kill(self.proc.pid, signum)
        except ProcessLookupError:
            pass

    def wait(self) -> process.Outcome:
        outcome = super().wait()
        outcome.stderr_tail = failing_rank_output(outcome.stderr_tail)
        outcome.stdout_tail = failing_rank_output(outcome.stdout_tail)
        return outcome


# --- SSH between the hosts ---------------------------------------------------------------------------

def ssh_command(host: str, *remote: str) -> list[str]:
    """ssh to another host of the job, never asking anything (the image's key and known host key)."""
    return ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", host, *remote]


def start_sshd() -> subprocess.Popen:
    if not Path(SSHD).is_file():
        raise MpiError(f"{SSHD} is not in this image: MPI jobs need the full image (not image-cpu-lean)")
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)
    # -D: in the foreground, our child, so that it ends with the job; -e: its log to the job's log.
    return subprocess.Popen([SSHD, "-D", "-e"], stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)


def stop_process(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _answers(host: str, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, SSH_PORT), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass
class Job:
    """One host's part in an MPI job. The first host: start(), launch with command()/process(), then
    finish(); the others: serve()."""

    settings: Settings
    sshd: subprocess.Popen | None = None
    _run: Callable[..., subprocess.CompletedProcess] = field(default=subprocess.run, repr=False)

    @property
    def is_master(self) -> bool:
        return self.settings.is_master

    def start(self) -> None:
        """The first host: with several, sshd, then wait until every other host takes our SSH login."""
        if shutil.which("mpirun") is None:
            raise MpiError("mpirun is not in this image: MPI jobs need the full image (not image-cpu-lean)")
        if len(self.settings.hosts) == 1:
            return
        self.sshd = start_sshd()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        for host in self.settings.workers:
            log.info("MPI: waiting for %s to accept SSH", host)
            while True:
                probe = self._run(ssh_command(host, "true"), capture_output=True, text=True)
                if probe.returncode == 0:
                    break
                if time.monotonic() > deadline:
                    raise MpiError(f"host {host} did not accept SSH within {STARTUP_TIMEOUT} s (its train did not "
                                   f"start sshd, or the hosts cannot reach each other): {probe.stderr.strip()}")
                time.sleep(1.0)
        log.info("MPI: %d hosts ready, %d processes", len(self.settings.hosts), self.settings.total_processes)

    def command(self, script: list[str], variables: Mapping[str, str]) -> list[str]:
        return mpirun_command(self.settings, script, variables)

    @staticmethod
    def process(cmd: list[str], cwd: str, variables: dict[str, str]) -> MpirunProcess:
        return MpirunProcess(cmd, cwd, variables)

    def finish(self, code: int, paths: environment.Paths) -> None:
        """The first host's job has ended with `code`: each other host gets it, with the failure reason when
        there is one, and has acted on it (or FINAL_WAIT has passed); then sshd stops."""
        try:
            if self.is_master and len(self.settings.hosts) > 1:
                reason = _first_line(paths.failure) if code else ""
                body = json.dumps({"exit_code": code, "reason": reason, "host": self.settings.current_host})
                for host in self.settings.workers:
                    self._tell(host, body)
        finally:
            stop_process(self.sshd)
            self.sshd = None

    def _tell(self, host: str, body: str) -> None:
        """The outcome to `host`, in one SSH session that ends once the host has taken it (TAKEN_FILE). Once
        the outcome is there, a session cut short (the host has ended, its container with it) is no failure."""
        target, taken = shlex.quote(str(STATUS_FILE)), shlex.quote(str(TAKEN_FILE))
        polls = int(FINAL_WAIT / 0.2)
        remote = (f"mkdir -p {shlex.quote(str(STATUS_FILE.parent))} && cat > {target}.tmp && mv {target}.tmp {target}"
                  f" && echo {DELIVERED} && for i in $(seq {polls}); do [ -e {taken} ] && break; sleep 0.2; done")
        for attempt in range(3):
            told = self._run(ssh_command(host, remote), input=body, capture_output=True, text=True)
            if told.returncode == 0 or DELIVERED in (told.stdout or ""):
                return
            time.sleep(1.0 + attempt)
        log.warning("MPI: could not tell %s that the job ended (%s): it will see the first host gone",
                    host, told.stderr.strip())

    def serve(self, paths: environment.Paths) -> int:
        """Another host: sshd for mpirun until the first host says the job has ended; its exit code."""
        master = self.settings.master
        STATUS_FILE.unlink(missing_ok=True)
        TAKEN_FILE.unlink(missing_ok=True)
        stopping: list[float] = []

        def on_signal(signum: int, frame: Any) -> None:
            if not stopping:
                stopping.append(time.monotonic())
                os.write(2, f"WARNING: {signal.Signals(signum).name} received: waiting for {master}'s outcome\n"
                         .encode())

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        self.sshd = start_sshd()
        log.info("MPI: sshd started on %s; %s runs the job", self.settings.current_host, master)
        try:
            code, reason = self._wait_for_outcome(master, stopping)
            if code == 0:
                environment.write_success(paths)
                log.info("MPI: the job ended successfully on %s", master)
            else:
                environment.write_failure(paths, reason)
                print(f"ERROR: {reason}", flush=True)
            _touch(TAKEN_FILE)  # the first host's session waits for it (Job._tell): this host has done its part
        finally:
            stop_process(self.sshd)
            self.sshd = None
            for s, handler in previous.items():
                signal.signal(s, handler)
        return code

    def _wait_for_outcome(self, master: str, stopping: list[float]) -> tuple[int, str]:
        answered_once = False
        last_seen = time.monotonic()
        deadline = last_seen + STARTUP_TIMEOUT
        next_probe = 0.0
        while True:
            status = read_status()
            if status is not None:
                return status
            now = time.monotonic()
            if stopping and now - stopping[0] > STOP_GRACE:
                return 143, f"Training job stopped: {master} did not report the job's end within {STOP_GRACE} s"
            if now >= next_probe:
                next_probe = now + 2.0
                if _answers(master):
                    answered_once, last_seen = True, now
                elif stopping:
                    return 143, f"Training job stopped: the stop reached this host and {master} is gone"
                elif answered_once and now - last_seen > self.settings.peer_timeout:
                    return 1, (f"the first host {master} stopped answering for {now - last_seen:.0f} s before "
                               "the MPI job ended (it died or the network failed; "
                               f"peer_timeout={self.settings.peer_timeout})")
                elif not answered_once and now > deadline:
                    return 1, f"the first host {master} did not answer within {STARTUP_TIMEOUT} s"
            time.sleep(POLL_INTERVAL)


def _touch(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    except OSError as e:  # the first host then waits FINAL_WAIT at most
        log.warning("MPI: cannot write %s: %s", path, e)


def read_status() -> tuple[int, str] | None:
    try:
        data = json.loads(STATUS_FILE.read_text())
        return int(data["exit_code"]), str(data.get("reason") or f"the MPI job failed on {data.get('host')}")
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _first_line(path: Path) -> str:
    try:
        return path.read_text().split("\n", 1)[0].strip()
    except OSError:
        return ""
