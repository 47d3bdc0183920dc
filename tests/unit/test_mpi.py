"""Script mode's MPI jobs (`sagemaker_mpi_enabled`): who does what, the mpirun line AWS's toolkit runs, the
failure reason taken from the rank that failed, and how the first host and the others hand over the outcome.
mpirun, ssh and sshd themselves run in the image (tests/container/test_horovod.py)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from devkit.waiting import wait_until
from mxnet_byoc.train import environment
from mxnet_byoc.train.script import mpi, runner, smenv
from tests.unit.test_script_env import job

TWO_HOSTS = {"current_host": "algo-1", "hosts": ["algo-1", "algo-2"], "network_interface_name": "eth0"}
ETH0 = lambda: {"lo", "eth0"}  # noqa: E731 - the interfaces a SageMaker host has


def settings(tmp_path: Path, framework: dict | None = None, resources: dict | None = None,
             gpus: int = 0, hyperparameters: dict | None = None) -> mpi.Settings:
    hps = {"sagemaker_program": "train.py", "sagemaker_mpi_enabled": "true", **(framework or {}),
           **(hyperparameters or {})}
    env = smenv.ScriptEnv.load(job(tmp_path, hps, resources if resources is not None else TWO_HOSTS))
    env.num_gpus = gpus
    return mpi.Settings.from_env(env)


SCRIPT = ["/opt/venv/bin/python", "--", "train.py", "--epochs", "2"]


def test_the_first_host_runs_mpirun_and_the_others_serve_it(tmp_path):
    first = settings(tmp_path / "a")
    other = settings(tmp_path / "b", resources={**TWO_HOSTS, "current_host": "algo-2"})
    assert first.is_master and first.workers == ["algo-2"]
    assert not other.is_master and other.master == "algo-1"


def test_processes_per_host_default_to_one_per_gpu_else_one(tmp_path):
    assert settings(tmp_path / "cpu").processes_per_host == 1
    gpus = settings(tmp_path / "gpu", gpus=8)
    assert gpus.processes_per_host == 8 and gpus.total_processes == 16
    chosen = settings(tmp_path / "set", {"sagemaker_mpi_num_of_processes_per_host": "2"}, gpus=8)
    assert chosen.processes_per_host == 2 and chosen.total_processes == 4
    total = settings(tmp_path / "np", {"sagemaker_mpi_num_of_processes_per_host": "2",
                                       "sagemaker_mpi_num_processes": "3"})
    assert total.total_processes == 3


@pytest.mark.parametrize("value, shown", [("0", "0"), ("-1", "-1"), ("two", "'two'"), ("1.5", "1.5"), ("true", "True")])
def test_a_process_count_that_is_not_a_positive_whole_number_is_the_reason(tmp_path, value, shown):
    with pytest.raises(mpi.MpiError, match=rf"sagemaker_mpi_num_of_processes_per_host must be a positive whole "
                                           rf"number, not {re.escape(shown)}$"):
        settings(tmp_path, {"sagemaker_mpi_num_of_processes_per_host": value})


def test_the_toolkits_mpirun_line_over_two_hosts(tmp_path):
    variables = {"SM_HOSTS": '["algo-1","algo-2"]', "SM_CURRENT_HOST": "algo-1", "PATH": "/usr/bin",
                 "PYTHONPATH": "/opt/ml/code", "PYTHONUNBUFFERED": "1", "HOME": "/root", "AWS_SESSION_TOKEN": "t"}
    cmd = mpi.mpirun_command(settings(tmp_path), SCRIPT, variables, interfaces=ETH0)
    assert cmd == [
        "mpirun", "--host", "algo-1,algo-2", "-np", "2", "--allow-run-as-root", "--display-map", "--tag-output",
        "-mca", "btl_tcp_if_include", "eth0", "-mca", "oob_tcp_if_include", "eth0",
        "-mca", "plm_rsh_no_tree_spawn", "1", "-bind-to", "none", "-map-by", "slot", "-mca", "pml", "ob1",
        "-mca", "btl", "^openib", "-mca", "orte_abort_on_non_zero_status", "1",
        "-mca", "btl_vader_single_copy_mechanism", "none",
        "-x", "NCCL_MIN_NRINGS=4", "-x", "NCCL_SOCKET_IFNAME=eth0", "-x", "NCCL_DEBUG=INFO",
        "-x", "PATH", "-x", "PYTHONPATH", "-x", "PYTHONUNBUFFERED", "-x", "AWS_SESSION_TOKEN",
        "-x", "SM_CURRENT_HOST", "-x", "SM_HOSTS",
        "/opt/venv/bin/python", "-m", "mpi4py", "train.py", "--epochs", "2",
    ]


def test_slots_per_host_and_one_host_without_ssh(tmp_path):
    two_by_two = mpi.mpirun_command(settings(tmp_path / "a", {"sagemaker_mpi_num_of_processes_per_host": 2}),
                                    SCRIPT, {}, interfaces=ETH0)
    assert two_by_two[1:5] == ["--host", "algo-1:2,algo-2:2", "-np", "4"]
    one_host = settings(tmp_path / "b", {"sagemaker_mpi_num_of_processes_per_host": 2},
                        resources={"current_host": "algo-1", "hosts": ["algo-1"]})
    # One host: mpirun starts both ranks itself (no name service, no SSH), on any network.
    cmd = mpi.mpirun_command(one_host, SCRIPT, {}, interfaces=lambda: {"lo"})
    assert cmd[1:5] == ["--host", "localhost:2", "-np", "2"] and "btl_tcp_if_include" not in cmd


def test_the_network_interface_comes_from_the_job_and_must_exist(tmp_path):
    named = settings(tmp_path / "a", {"sagemaker_network_interface_name": "ens5"})
    cmd = mpi.mpirun_command(named, SCRIPT, {}, interfaces=lambda: {"lo", "ens5"})
    assert cmd[cmd.index("btl_tcp_if_include") + 1] == "ens5" and "NCCL_SOCKET_IFNAME=ens5" in cmd
    with pytest.raises(mpi.MpiError, match=r"the network interface 'ens5' .* is not on this host; it has: eth0, lo"):
        mpi.mpirun_command(named, SCRIPT, {}, interfaces=ETH0)


def test_custom_mpi_options_follow_the_toolkits_and_may_set_nccl_debug(tmp_path):
    custom = settings(tmp_path, {"sagemaker_mpi_custom_mpi_options": "--NCCL_DEBUG WARN -x HOROVOD_TIMELINE=/tmp/t "
                                                                     "--mca btl_tcp_links 2"})
    cmd = mpi.mpirun_command(custom, SCRIPT, {}, interfaces=ETH0)
    assert "NCCL_DEBUG=WARN" in cmd and "--NCCL_DEBUG" not in cmd
    python = cmd.index("/opt/venv/bin/python")
    assert cmd[python - 5:python] == ["-x", "HOROVOD_TIMELINE=/tmp/t", "--mca", "btl_tcp_links", "2"]
    with pytest.raises(mpi.MpiError, match="sagemaker_mpi_custom_mpi_options cannot be split"):
        mpi.mpirun_command(settings(tmp_path / "q", {"sagemaker_mpi_custom_mpi_options": "-x 'A=1"}), SCRIPT, {},
                           interfaces=ETH0)


def test_every_rank_runs_the_script_under_mpi4py():
    assert mpi.with_mpi4py(["py", "--", "src/train.py", "-a"]) == ["py", "-m", "mpi4py", "src/train.py", "-a"]
    assert mpi.with_mpi4py(["py", "-m", "trainer.main", "-a"]) == ["py", "-m", "mpi4py", "-m", "trainer.main", "-a"]
    shell = ["/bin/sh", "-c", "./train.sh --a 1"]
    assert mpi.with_mpi4py(shell) == shell


# mpirun's stderr when rank 1 of 2 raised: each rank's lines tagged, then mpirun's own account.
TAGGED_STDERR = """\
[1,0]<stderr>:[2024-01-01 00:00:00] INFO rank 0 starting
[1,1]<stderr>:Traceback (most recent call last):
[1,1]<stderr>:  File "train.py", line 9, in <module>
[1,1]<stderr>:    [1,1]<stderr>:raise ValueError("rank 1 has no data")[1,1]<stderr>:
[1,1]<stderr>:ValueError: rank 1 has no data
[1,0]<stderr>:Traceback (most recent call last):
[1,0]<stderr>:  File "train.py", line 12, in <module>
[1,0]<stderr>:KeyboardInterrupt: stopped by mpirun
--------------------------------------------------------------------------
Primary job  terminated normally, but 1 process returned
a non-zero exit code. Per user-direction, the job has been aborted.
--------------------------------------------------------------------------
mpirun detected that one or more processes exited with non-zero status, thus causing
the job to be terminated. The first process to do so was:

  Process name: [[4242,1],1]
  Exit code:    1
--------------------------------------------------------------------------
"""


def test_the_reason_is_the_error_of_the_rank_mpirun_names():
    from mxnet_byoc.train.script import process

    error, traceback = process.last_error(mpi.failing_rank_output(TAGGED_STDERR))
    assert error == "ValueError: rank 1 has no data"
    assert traceback.startswith("Traceback (most recent call last):") and "[1,1]" not in traceback
    assert '    raise ValueError("rank 1 has no data")\n' in traceback  # a line mpirun tagged in three pieces


def test_mpi_abort_names_the_rank_and_without_a_name_the_first_traceback_counts():
    from mxnet_byoc.train.script import process

    aborted = TAGGED_STDERR.split("----")[0].replace("[1,0]<stderr>:KeyboardInterrupt", "[1,0]<stderr>:OSError: disk") \
        + "MPI_ABORT was invoked on rank 0 in communicator MPI_COMM_WORLD\nwith errorcode 1.\n"
    assert process.last_error(mpi.failing_rank_output(aborted))[0] == "OSError: disk: stopped by mpirun"
    unnamed = "[1,1]<stderr>:warming up\n[1,0]<stderr>:Traceback (most recent call last):\n" \
              "[1,0]<stderr>:  File \"t.py\", line 1\n[1,0]<stderr>:RuntimeError: rank 0 broke\n"
    assert process.last_error(mpi.failing_rank_output(unnamed))[0] == "RuntimeError: rank 0 broke"
    plain = "[1,0]<stderr>:usage: train.py [-h]\nmpirun: some ranks exited\n"
    assert process.last_error(mpi.failing_rank_output(plain))[0] == "mpirun: some ranks exited"


class FakeSsh:
    """subprocess.run for ssh: answers from a script of return codes, and records what was asked."""

    stdout = ""

    def __init__(self, codes: list[int]):
        self.codes, self.calls = list(codes), []

    def __call__(self, cmd, **kwargs):
        self.calls.append((cmd, kwargs.get("input")))
        code = self.codes.pop(0) if self.codes else 0
        return subprocess.CompletedProcess(cmd, code, self.stdout,
                                           "" if code == 0 else "ssh: connect to host algo-2: refused")


def test_the_first_host_waits_until_each_other_host_takes_its_ssh_login(tmp_path, monkeypatch):
    monkeypatch.setattr(mpi, "start_sshd", lambda: None)
    monkeypatch.setattr(mpi.time, "sleep", lambda s: None)
    monkeypatch.setattr(mpi.shutil, "which", lambda name: f"/usr/bin/{name}")
    ssh = FakeSsh([255, 255, 0])
    mpi.Job(settings(tmp_path), _run=ssh).start()
    assert [c[0] for c in ssh.calls] == [mpi.ssh_command("algo-2", "true")] * 3
    assert ssh.calls[0][0][:5] == ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
    monkeypatch.setattr(mpi, "STARTUP_TIMEOUT", -1)
    with pytest.raises(mpi.MpiError, match=r"host algo-2 did not accept SSH within -1 s .*refused"):
        mpi.Job(settings(tmp_path / "b"), _run=FakeSsh([255])).start()


def test_the_first_host_tells_the_others_the_exit_code_and_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(mpi.time, "sleep", lambda s: None)
    paths = environment.Paths(tmp_path / "ml")
    environment.write_failure(paths, "ValueError: rank 1 has no data (the script train.py exited with code 1)")
    ssh = FakeSsh([255, 0])  # the first try fails, the second gets through
    mpi.Job(settings(tmp_path), _run=ssh).finish(1, paths)
    (cmd, body), = ssh.calls[1:]
    assert cmd[:-1] == mpi.ssh_command("algo-2") and str(mpi.STATUS_FILE) in cmd[-1]
    assert json.loads(body) == {"exit_code": 1, "host": "algo-1",
                                "reason": "ValueError: rank 1 has no data (the script train.py exited with code 1)"}


def test_the_first_hosts_session_ends_once_the_other_host_has_taken_the_outcome(tmp_path, monkeypatch):
    # SDK local mode stops every container as soon as the first one exits: the first host stays until the
    # other has acted on the outcome (and never longer than FINAL_WAIT).
    monkeypatch.setattr(mpi, "STATUS_FILE", tmp_path / "status" / "mpi-status.json")
    monkeypatch.setattr(mpi, "TAKEN_FILE", tmp_path / "status" / "mpi-status.taken")
    events = []

    def ssh_runs_it_here(cmd, **kwargs):  # the remote command, run by a local shell
        events.append("session started")
        done = subprocess.run(["bash", "-c", cmd[-1]], **kwargs)
        events.append("session ended")
        return done

    def other_host() -> None:
        wait_until(mpi.STATUS_FILE.exists, timeout=10, what="the outcome")
        events.append("taken")
        mpi._touch(mpi.TAKEN_FILE)

    first = settings(tmp_path)
    taker = threading.Thread(target=other_host)
    taker.start()
    mpi.Job(first, _run=ssh_runs_it_here).finish(0, environment.Paths(tmp_path / "ml"))
    taker.join()
    assert events == ["session started", "taken", "session ended"]
    assert json.loads(mpi.STATUS_FILE.read_text())["exit_code"] == 0
    cut_short = FakeSsh([255])
    cut_short.stdout = mpi.DELIVERED  # the other host ended (its container too) once it had the outcome
    mpi.Job(first, _run=cut_short).finish(0, environment.Paths(tmp_path / "ml"))
    assert len(cut_short.calls) == 1  # not sent again
    monkeypatch.setattr(mpi, "FINAL_WAIT", 0.4)  # nobody takes it: the session ends all the same
    mpi.TAKEN_FILE.unlink()
    started = time.monotonic()
    mpi.Job(first, _run=ssh_runs_it_here).finish(0, environment.Paths(tmp_path / "ml"))
    assert time.monotonic() - started < 5


def test_one_host_and_the_other_hosts_tell_nobody(tmp_path):
    ssh = FakeSsh([])
    one = settings(tmp_path / "a", resources={"current_host": "algo-1", "hosts": ["algo-1"]})
    mpi.Job(one, _run=ssh).finish(0, environment.Paths(tmp_path / "ml"))
    other = settings(tmp_path / "b", resources={**TWO_HOSTS, "current_host": "algo-2"})
    mpi.Job(other, _run=ssh).finish(0, environment.Paths(tmp_path / "ml"))
    assert ssh.calls == []


@pytest.fixture
def worker(tmp_path, monkeypatch):
    """Another host's Job with a stand-in sshd, its status file under tmp_path, and quick polling."""
    monkeypatch.setattr(mpi, "STATUS_FILE", tmp_path / "status" / "mpi-status.json")
    monkeypatch.setattr(mpi, "TAKEN_FILE", tmp_path / "status" / "mpi-status.taken")
    monkeypatch.setattr(mpi, "POLL_INTERVAL", 0.01)
    monkeypatch.setattr(mpi, "start_sshd", lambda: subprocess.Popen(["sleep", "60"]))
    return mpi.Job(settings(tmp_path / "job", resources={**TWO_HOSTS, "current_host": "algo-2"}))


def _status_appears(status: dict, answered: threading.Event) -> None:
    answered.wait(10)
    mpi.STATUS_FILE.parent.mkdir(parents=True, exist_ok=True)
    mpi.STATUS_FILE.write_text(json.dumps(status))


@pytest.mark.parametrize("status, code", [({"exit_code": 0, "reason": "", "host": "algo-1"}, 0),
                                          ({"exit_code": 3, "reason": "ValueError: bad", "host": "algo-1"}, 3)])
def test_another_host_ends_with_the_first_hosts_outcome(worker, tmp_path, monkeypatch, status, code):
    answered = threading.Event()

    def master_answers(host, timeout=2.0):
        answered.set()
        return True

    monkeypatch.setattr(mpi, "_answers", master_answers)
    writer = threading.Thread(target=_status_appears, args=(status, answered))
    writer.start()
    paths = environment.Paths(tmp_path / "ml")
    assert worker.serve(paths) == code
    writer.join()
    assert worker.sshd is None  # stopped
    assert mpi.TAKEN_FILE.exists()  # what the first host's session waits for
    if code == 0:
        assert (paths.output / "success").exists() and not paths.failure.exists()
    else:
        assert paths.failure.read_text().startswith("ValueError: bad")


def test_another_host_fails_when_the_first_one_stops_answering(worker, tmp_path, monkeypatch):
    answers = iter([True])
    monkeypatch.setattr(mpi, "_answers", lambda host, timeout=2.0: next(answers, False))
    worker.settings.peer_timeout = 0
    paths = environment.Paths(tmp_path / "ml")
    assert worker.serve(paths) == 1
    assert paths.failure.read_text().startswith("the first host algo-1 stopped answering for ")


@pytest.fixture
def run_as_train():
    """runner.run in this process, as `train` calls it: it takes SIGTERM and SIGINT over (put back after)."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield runner.run
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def test_mpi_in_an_image_without_sshd_is_the_reason(tmp_path, monkeypatch, run_as_train):
    monkeypatch.setattr(mpi, "SSHD", str(tmp_path / "no-sshd"))
    code = tmp_path / "code"
    code.mkdir()
    (code / "train.py").write_text("open('ran', 'w')\n")
    base = job(tmp_path / "ml", {"sagemaker_program": "train.py", "sagemaker_submit_directory": str(code),
                                 "sagemaker_mpi_enabled": "true"}, {**TWO_HOSTS, "current_host": "algo-2"})
    assert run_as_train(base) == runner.EXIT_FAILED
    assert (base / "output" / "failure").read_text().startswith(
        f"{tmp_path / 'no-sshd'} is not in this image: MPI jobs need the full image")
    assert not (code / "ran").exists()


def test_mpi_and_the_parameter_server_together_are_refused(tmp_path):
    base = job(tmp_path, {"sagemaker_program": "train.py", "sagemaker_mpi_enabled": "true",
                          "sagemaker_parameter_server_enabled": "true"})
    with pytest.raises(runner.ScriptError, match="both on: choose one distribution"):
        runner.refuse_unsupported_distribution(smenv.ScriptEnv.load(base))


def test_mpi_in_an_image_without_mpirun_is_the_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(mpi.shutil, "which", lambda name: None)
    one = settings(tmp_path, resources={"current_host": "algo-1", "hosts": ["algo-1"]})
    with pytest.raises(mpi.MpiError, match=r"^mpirun is not in this image: MPI jobs need the full image"):
        mpi.Job(one).start()
