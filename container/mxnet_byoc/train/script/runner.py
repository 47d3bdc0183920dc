"""Script mode: `train` runs the user's own script, as AWS's MXNet containers (their training toolkit) do.

1. The code: `sagemaker_submit_directory` (a folder, /opt/ml/code in local mode, or an s3:// or local
   sourcedir.tar.gz, unpacked into <base>/code); its requirements.txt installed with pip (a folder with a
   setup.py is pip-installed as a package instead, and run as a module).
2. With `sagemaker_parameter_server_enabled`, MXNet's scheduler (first host) and a server on every host,
   and the DMLC_* worker variables, so that the script's kvstore="dist_sync" joins one cluster. With
   `sagemaker_mpi_enabled`, the script runs under mpirun from the first host (mpi.py).
3. The script: `python <entry point> --name value ...` in the code folder, with every SM_* variable
   (smenv.py), unbuffered; its exit code is the job's. On success output/success is written; on failure
   output/failure holds the script's last error line, then its traceback; SIGTERM goes to the script and
   its children and the job ends as stopped (exit 143).
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

from ... import gpus, usercode
from ...errors import ReasonError
from .. import configfiles, environment
from . import mpi, process, smenv

log = logging.getLogger("mxnet_byoc.script")

EXIT_FAILED = 1
EXIT_STOPPED = 143  # 128 + SIGTERM, as the built-in model's job exits when stopped
# AWS's MXNet container: the scheduler listens on `_ps_port` (default 8000) of the first host. Like those
# two, `_peer_timeout` is a setting of the container's, and the script sees it among its arguments too.
PS_PORT = "_ps_port"
PS_VERBOSE = "_ps_verbose"
PEER_TIMEOUT = "_peer_timeout"
DEFAULT_PS_PORT = 8000
# Hosts come up at different times (image pull, a requirements.txt to install): peers may take this long
# to answer at all. Once every one has answered, a peer silent for `_peer_timeout` seconds (heartbeats on
# `_ps_port + 1`) fails the job instead of leaving it hanging in a push.
PEER_STARTUP_TIMEOUT = 900
DEFAULT_PEER_TIMEOUT = 60
FAILURE_DETAIL_LINES = 40  # of the script's stderr, below the reason, when it printed no traceback
# The toolkit's rule: a relative path of plain names inside the code folder.
_SAFE_ENTRY_POINT = re.compile(r"^[A-Za-z0-9._][A-Za-z0-9._+-]*(/[A-Za-z0-9._+-]+)*$")


class ScriptError(ReasonError):
    """The script cannot be started; the message is the job's failure reason."""


class _StoppedEarly(Exception):
    """SIGTERM or SIGINT before the script started (while its requirements were installed, say)."""


def requested(base: Path) -> bool:
    """Whether this job names a script (the `sagemaker_program` hyperparameter or $SAGEMAKER_PROGRAM).
    An unreadable hyperparameters.json is the built-in model's to report."""
    if os.environ.get(smenv.PROGRAM_VARIABLE):
        return True
    try:
        return smenv.PROGRAM in configfiles.hyperparameters(environment.Paths(base).config)
    except configfiles.ContractError:
        return False


def check_entry_point(name: str, code_dir: Path) -> Path:
    """The entry point's file; a name that is empty, absolute, climbs out of the code folder or would be
    read as an option is refused, as the toolkit refuses it."""
    if not name:
        raise ScriptError("the entry point (sagemaker_program) is empty: name the script to run, e.g. train.py")
    if not _SAFE_ENTRY_POINT.match(name) or any(part in (".", "..") for part in name.split("/")):
        raise ScriptError(f"the entry point {name!r} is not a plain relative path inside the code folder: use "
                          "letters, digits, '.', '_', '+', '-' and '/' only, not starting with '-' or '/', "
                          "with no '.' or '..' parts (e.g. train.py or src/train.py)")
    path = code_dir / name
    if not path.is_file():
        present = sorted(p.name for p in code_dir.iterdir())[:20] if code_dir.is_dir() else []
        raise ScriptError(f"the entry point {name} is not in the code folder {code_dir} (it holds: "
                          f"{', '.join(present) or 'nothing'})")
    return path


def command(env: smenv.ScriptEnv, code_dir: Path) -> list[str]:
    """What the toolkit runs: a package (a setup.py beside the entry point) as `python -m`, a .py file with
    the image's Python, anything else (a .sh) through /bin/sh; the hyperparameters follow as arguments."""
    name = env.user_entry_point or ""
    path = check_entry_point(name, code_dir)
    args = env.cmd_args()
    if name.endswith(".sh") or not (name.endswith(".py") or (code_dir / "setup.py").is_file()):
        path.chmod(0o777)
        return ["/bin/sh", "-c", f"./{shlex.quote(name)} {' '.join(shlex.quote(a) for a in args)}"]
    if (code_dir / "setup.py").is_file():
        return [sys.executable, "-m", re.sub(r"\.py$", "", name).replace("/", "."), *args]
    return [sys.executable, "--", name, *args]


# Distributions AWS's MXNet containers ran and this image cannot (no SageMaker data parallel library): refused
# before anything runs, rather than the script run alone on every host as if it were a cluster.
UNSUPPORTED_DISTRIBUTIONS = {
    smenv.DATA_PARALLEL: "SageMaker's distributed data parallel library",
}


def refuse_unsupported_distribution(env: smenv.ScriptEnv) -> None:
    """ScriptError naming the switch when the job asks for a distribution this image does not have."""
    for switch, what in UNSUPPORTED_DISTRIBUTIONS.items():
        if smenv.switched_on(env.additional_framework_parameters.get(switch, False)):
            raise ScriptError(f"{switch}: {what} is not in this image; for several hosts use MPI (Horovod) or "
                              "MXNet's parameter server (distribution={'parameter_server': {'enabled': True}})")
    if env.parameter_server and mpi.requested(env):
        raise ScriptError(f"{smenv.PARAMETER_SERVER} and {smenv.MPI} are both on: choose one distribution")


def _is_package(env: smenv.ScriptEnv, code_dir: Path) -> bool:
    name = env.user_entry_point or ""
    return not name.endswith(".sh") and (code_dir / "setup.py").is_file()


def _script_environment(env: smenv.ScriptEnv, code_dir: Path) -> dict[str, str]:
    variables = {**os.environ, **env.process_env(), **env.env_vars(), "PYTHONUNBUFFERED": "1"}
    # The code folder importable from any Python process the script starts, as the toolkit arranges.
    variables["PYTHONPATH"] = os.pathsep.join(p for p in (str(code_dir), os.environ.get("PYTHONPATH")) if p)
    return variables


def _whole_number(hps: dict[str, Any], name: str, default: int) -> int:
    try:
        value = int(hps.get(name, default))
    except (TypeError, ValueError):
        value = 0
    if value <= 0:
        raise ScriptError(f"hyperparameter {name} must be a positive whole number, not {hps[name]!r}")
    return value


class _Cluster:
    """MXNet's parameter server for the script, built on the built-in model's distributed module."""

    def __init__(self, env: smenv.ScriptEnv):
        from .. import distributed

        hps = env.hyperparameters
        port = _whole_number(hps, PS_PORT, DEFAULT_PS_PORT)
        self.peer_timeout = _whole_number(hps, PEER_TIMEOUT, DEFAULT_PEER_TIMEOUT)
        hosts = env.hosts
        resources = environment.Resources(current_host=env.current_host, hosts=hosts,
                                          network_interface=env.resource_config.get("network_interface_name"))
        # One host needs no name service: the scheduler is this machine.
        addresses = (distributed.resolve(hosts, PEER_STARTUP_TIMEOUT) if len(hosts) > 1
                     else {env.current_host: "127.0.0.1"})
        self.cluster = distributed.Cluster(resources, addresses, port)
        self.servers = distributed.ParameterServers(self.cluster)
        self.watchdog: Any = None
        self._distributed = distributed
        os.environ["PS_VERBOSE"] = str(hps.get(PS_VERBOSE, "0"))

    def start(self, on_failure) -> None:
        if len(self.cluster.resources.hosts) > 1:
            self.watchdog = self._distributed.Watchdog(self.cluster, self.servers, self.peer_timeout, on_failure)
            self.watchdog.wait_for_peers(PEER_STARTUP_TIMEOUT)
        self.servers.start()  # also puts the worker's DMLC_* variables into os.environ for the script
        if self.watchdog is not None:
            self.watchdog.start()
        log.info("parameter server: scheduler %s:%d, %d worker(s) and server(s), this host %s",
                 self.cluster.root, self.cluster.port, self.cluster.size, self.cluster.resources.current_host)

    def finish_together(self, should_stop) -> None:
        """The script ended well here: wait for the other hosts' scripts (see Watchdog.finish_together)."""
        if self.watchdog is not None:
            log.info("waiting for the other hosts' scripts to end")
            self.watchdog.finish_together(should_stop)

    def stop(self) -> None:
        if self.watchdog is not None:
            self.watchdog.stop()
        self.servers.stop(timeout=10)


def _reason(outcome: process.Outcome, name: str) -> tuple[str, str]:
    """The failure reason's first line and what follows it in output/failure."""
    error, traceback = process.last_error(outcome.stderr_tail)
    if not traceback:  # a traceback that rich printed on stdout says more than stderr's last line
        rich_error, rich_traceback = process.last_rich_error(outcome.stdout_tail)
        if rich_error:
            error, traceback = rich_error, rich_traceback
    if outcome.aborted:
        return outcome.aborted, traceback
    if outcome.stopped_by:
        how = f"was killed by {signal.Signals(outcome.signal).name}" if outcome.signal else \
            f"exited with code {outcome.returncode}"
        return f"Training job stopped: {outcome.stopped_by} received and passed on to {name}, which {how}", ""
    if outcome.signal:
        hint = " (out of memory?)" if outcome.signal == signal.SIGKILL else ""
        ended = f"was killed by {signal.Signals(outcome.signal).name}{hint}"
    else:
        ended = f"exited with code {outcome.returncode}"
    if not error:
        return f"the script {name} {ended} and printed no error", ""
    detail = traceback or "\n".join(outcome.stderr_tail.rstrip().splitlines()[-FAILURE_DETAIL_LINES:])
    return f"{error} (the script {name} {ended})", detail


def _fail(paths: environment.Paths, reason: str, detail: str = "") -> None:
    environment.write_failure(paths, reason)
    if detail:
        try:
            with open(paths.failure, "a") as f:
                f.write("\n" + detail.rstrip() + "\n")
        except OSError:
            pass
    print(f"ERROR: {reason}", file=sys.stderr, flush=True)


def run(base: Path) -> int:
    """The whole job; the exit code is the script's (143 when stopped)."""
    joined: list[mpi.Job] = []  # the MPI job this host takes part in, once it has one
    code = _run(base, joined)
    for job in joined:  # the other hosts learn the outcome only now, with output/failure written
        job.finish(code, environment.Paths(base))
    return code


def _run(base: Path, joined: list[mpi.Job]) -> int:
    paths = environment.Paths(base)
    started = time.monotonic()
    script: process.ScriptProcess | None = None
    late_stop: list[str] = []

    def on_signal(signum: int, frame: Any) -> None:
        if script is None:
            raise _StoppedEarly(signal.Signals(signum).name)
        # Not through logging: the signal can arrive in the middle of a write to the same stream.
        name = signal.Signals(signum).name
        if script.stop(signum):
            os.write(2, f"WARNING: {name} received: passed on to the script\n".encode())
        else:
            late_stop.append(name)
            os.write(2, f"WARNING: {name} received after the script ended: finishing\n".encode())

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    cluster: _Cluster | None = None
    try:
        gpus.require_supported()
        env = smenv.ScriptEnv.load(base)
        name = env.user_entry_point or ""
        refuse_unsupported_distribution(env)
        code_dir = usercode.fetch(env.module_dir, base / "code", env.region)
        if _is_package(env, code_dir):
            usercode.install_package(code_dir)
        else:
            usercode.install_requirements(code_dir)
        cmd = command(env, code_dir)
        for folder in (paths.model, paths.output_data):  # SageMaker creates them; `docker run` may not
            folder.mkdir(parents=True, exist_ok=True)
        launch = process.ScriptProcess
        if env.parameter_server:
            cluster = _Cluster(env)
            cluster.start(on_failure=lambda reason: script.abort(reason) if script else None)
        variables = _script_environment(env, code_dir)  # with the DMLC_* worker variables cluster.start() set
        if mpi.requested(env):  # never with the parameter server (refuse_unsupported_distribution)
            job = mpi.Job(mpi.Settings.from_env(env))
            joined.append(job)
            if not job.is_master:
                return job.serve(paths)
            job.start()
            cmd, launch = job.command(cmd, variables), job.process
        log.info("running the user's script in %s: %s", code_dir, shlex.join(cmd))
        starting = launch(cmd, str(code_dir), variables)
        starting.start()
        script = starting  # from here on a signal is passed on to the script
        outcome = script.wait()
        if cluster is not None and outcome.returncode == 0 and not (outcome.stopped_by or outcome.aborted):
            cluster.finish_together(lambda: bool(late_stop))
    except _StoppedEarly as e:
        _fail(paths, f"Training job stopped: {e} received before the script started")
        return EXIT_STOPPED
    except ReasonError as e:
        _fail(paths, str(e))
        return EXIT_FAILED
    except Exception as e:  # noqa: BLE001 - a failure of ours still ends in output/failure
        _fail(paths, f"script mode failed before the script ran: {type(e).__name__}: {e}")
        log.debug("traceback", exc_info=e)
        return EXIT_FAILED
    finally:
        if cluster is not None:
            cluster.stop()
    seconds = time.monotonic() - started
    if outcome.returncode == 0 and not outcome.stopped_by and not outcome.aborted:
        environment.write_success(paths)
        log.info("the script %s ended successfully after %.1f s", name, seconds)
        return 0
    reason, detail = _reason(outcome, name)
    _fail(paths, reason, detail)
    if outcome.aborted:
        return EXIT_FAILED
    if outcome.stopped_by:
        return EXIT_STOPPED
    return outcome.returncode or EXIT_FAILED


def main() -> int:
    from ... import modeldir

    logging.basicConfig(stream=sys.stdout, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(modeldir.base_dir())
