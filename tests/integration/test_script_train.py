"""Script mode as processes: the real `container/train` runs a user's script from a job folder.

What the script receives (SM_* variables, arguments), its output as it comes, its exit code, the
failure and success files, SIGTERM passed on to it and its children, code from S3 (a real S3 API:
moto's server on 127.0.0.1), requirements.txt and setup.py installed into a scratch virtualenv (never the
project's), and MXNet's parameter server across two loopback "hosts" for kvstore="dist_sync".
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from devkit import jobs, project, sourcedir
from devkit.net import free_port_pair
from devkit.waiting import wait_until

EXAMPLES = project.ROOT / "examples" / "script-mode"


def script_job(tmp_path: Path, code: dict[str, str] | str, hyperparameters: dict[str, str] | None = None,
               program: str = "train.py", config: dict | None = None, channels: tuple[str, ...] = ()) -> Path:
    """A job folder whose hyperparameters name `program` in a code folder holding `code`."""
    base = tmp_path / "ml"
    if isinstance(code, dict):
        folder = tmp_path / "code"
        for name, text in code.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(textwrap.dedent(text))
        code = str(folder)
    hps = {"sagemaker_program": json.dumps(program), "sagemaker_submit_directory": json.dumps(code),
           **(hyperparameters or {})}
    (base / "input" / "config").mkdir(parents=True)
    (base / "input" / "config" / "hyperparameters.json").write_text(json.dumps(hps))
    for name, content in (config or {}).items():
        (base / "input" / "config" / name).write_text(json.dumps(content))
    for name in channels:
        (base / "input" / "data" / name).mkdir(parents=True)
    return base


def run_train(base: Path, python: str = sys.executable, timeout: float = 120,
              **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([python, str(project.TRAIN)], env=jobs.train_env(base, **env), capture_output=True,
                          text=True, timeout=timeout)


def failure(base: Path) -> str:
    return (base / "output" / "failure").read_text()


# -- what the script receives ----------------------------------------------------------------------------

ECHO = """
    import json, os, sys
    print("started", flush=True)
    with open(os.path.join(os.environ["SM_MODEL_DIR"], "seen.json"), "w") as f:
        json.dump({"argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ)}, f)
"""


def test_the_script_gets_the_toolkits_variables_and_arguments_and_success_is_recorded(tmp_path):
    base = script_job(tmp_path, {"train.py": ECHO},
                      {"epochs": "2", "batch-size": "100", "learning_rate": "0.1", "use-bias": "True",
                       "note": '"two words"', "sagemaker_job_name": '"job-7"'},
                      config={"inputdataconfig.json": {"training": {"TrainingInputMode": "File"}}},
                      channels=("training",))
    done = run_train(base)
    assert done.returncode == 0, done.stdout + done.stderr
    seen = json.loads((base / "model" / "seen.json").read_text())
    assert seen["argv"] == ["--batch-size", "100", "--epochs", "2", "--learning_rate", "0.1", "--note", "two words",
                            "--use-bias", "True"]
    assert seen["cwd"] == str(tmp_path / "code")
    env = seen["env"]
    assert env["SM_CHANNEL_TRAINING"] == str(base / "input" / "data" / "training")
    assert env["SM_MODEL_DIR"] == str(base / "model") and env["SM_CURRENT_HOST"] == "algo-1"
    assert env["SM_HP_BATCH-SIZE"] == "100" and env["SM_HP_NOTE"] == "two words"
    assert json.loads(env["SM_HPS"])["epochs"] == 2
    assert env["SAGEMAKER_JOB_NAME"] == "job-7" and env["CURRENT_HOST"] == "algo-1"
    assert env["PYTHONUNBUFFERED"] == "1" and env["PYTHONPATH"].split(os.pathsep)[0] == str(tmp_path / "code")
    assert "started" in done.stdout
    assert (base / "output" / "success").is_file() and not (base / "output" / "failure").exists()
    # The built-in model's settings are not forced on the user's MXNet.
    assert "MXNET_ENGINE_TYPE" not in env or env["MXNET_ENGINE_TYPE"] == os.environ.get("MXNET_ENGINE_TYPE")


def test_output_streams_while_the_script_runs(tmp_path):
    base = script_job(tmp_path, {"train.py": """
        import sys, time
        print("epoch=1; loss=0.5;")
        print("to stderr", file=sys.stderr)
        time.sleep(60)
    """})
    proc = subprocess.Popen([sys.executable, str(project.TRAIN)], env=jobs.train_env(base),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        seen = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not {"epoch=1; loss=0.5;", "to stderr"} <= set(seen):
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line.strip())
        # Both lines came while the script still sleeps: nothing held them back (print without flush).
        assert {"epoch=1; loss=0.5;", "to stderr"} <= set(seen), seen
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


# -- how it ends ---------------------------------------------------------------------------------------------

def test_a_script_that_raises_fails_the_job_with_its_error_line_first(tmp_path):
    base = script_job(tmp_path, {"train.py": """
        import argparse
        def load(path):
            raise FileNotFoundError(f"no training files in {path}")
        load("/opt/ml/input/data/training")
    """})
    done = run_train(base)
    assert done.returncode == 1
    first, _, rest = failure(base).partition("\n")
    assert first == ("FileNotFoundError: no training files in /opt/ml/input/data/training "
                     "(the script train.py exited with code 1)")
    assert rest.lstrip("\n").startswith("Traceback (most recent call last):")
    assert 'line 4, in load' in rest
    assert not (base / "output" / "success").exists()
    assert "Traceback (most recent call last):" in done.stderr  # the script's own stderr reached the log
    assert f"ERROR: {first}" in done.stderr


def test_a_traceback_that_rich_prints_on_stdout_is_the_reason(tmp_path):
    # What a script that imports the SageMaker Python SDK 2 gets: sagemaker-core installs rich's excepthook,
    # which prints uncaught exceptions on stdout, leaving stderr empty.
    base = script_job(tmp_path, {"train.py": """
        from rich.console import Console
        from rich.traceback import install
        install(console=Console(width=100))
        print("epoch 1 done")
        raise ValueError("labels and images differ in count")
    """})
    done = run_train(base)
    assert done.returncode == 1
    first, _, rest = failure(base).partition("\n")
    assert first == "ValueError: labels and images differ in count (the script train.py exited with code 1)"
    assert "Traceback (most recent call last)" in rest and "train.py" in rest
    assert "epoch 1 done" in done.stdout  # the script's stdout still reaches the log as it comes


def test_a_scripts_exit_code_is_the_jobs(tmp_path):
    base = script_job(tmp_path, {"train.py": "import sys\nprint('bad input', file=sys.stderr)\nsys.exit(3)\n"})
    done = run_train(base)
    assert done.returncode == 3
    assert failure(base).splitlines()[0] == "bad input (the script train.py exited with code 3)"
    silent = script_job(tmp_path / "silent", {"train.py": "import os\nos._exit(3)\n"})
    assert run_train(silent).returncode == 3
    assert failure(silent).splitlines()[0] == "the script train.py exited with code 3 and printed no error"


SIGTERM_SCRIPT = """
import os, signal, subprocess, sys, time
marks = os.environ["SM_OUTPUT_DATA_DIR"]
CHILD = '''
import os, signal, sys, time
def stop(signum, frame):
    open(os.path.join(sys.argv[1], "child-got-sigterm"), "w").close()
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("child ready", flush=True)
while True:
    time.sleep(0.1)
'''
child = subprocess.Popen([sys.executable, "-c", CHILD, marks])
def stop(signum, frame):
    open(os.path.join(marks, "script-got-sigterm"), "w").close()
    child.wait()
    print("checkpoint written", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("script ready", flush=True)
while True:
    time.sleep(0.1)
"""


def test_sigterm_reaches_the_script_and_its_children_and_the_job_ends_as_stopped(tmp_path):
    base = script_job(tmp_path, {"train.py": SIGTERM_SCRIPT})
    proc = subprocess.Popen([sys.executable, str(project.TRAIN)], env=jobs.train_env(base),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        ready: set[str] = set()
        deadline = time.monotonic() + 60
        while ready != {"script ready", "child ready"} and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if line.strip() in ("script ready", "child ready"):
                ready.add(line.strip())
        assert ready == {"script ready", "child ready"}, proc.communicate(timeout=30)[0]
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 143, out
    assert (base / "output" / "data" / "script-got-sigterm").exists()
    assert (base / "output" / "data" / "child-got-sigterm").exists()
    assert "checkpoint written" in out
    assert failure(base).splitlines()[0] == ("Training job stopped: SIGTERM received and passed on to train.py, "
                                             "which exited with code 0")
    assert not (base / "output" / "success").exists()


# -- where the code comes from ----------------------------------------------------------------------------

def test_a_missing_entry_point_or_code_folder_is_a_clear_failure(tmp_path):
    base = script_job(tmp_path, {"other.py": ""}, program="train.py")
    assert run_train(base).returncode == 1
    assert failure(base).startswith(f"the entry point train.py is not in the code folder {tmp_path / 'code'} "
                                    "(it holds: other.py)")
    nowhere = script_job(tmp_path / "x", str(tmp_path / "nowhere"))
    assert run_train(nowhere).returncode == 1
    assert failure(nowhere).startswith(f"the code location {tmp_path / 'nowhere'} does not exist")


@pytest.fixture(scope="module")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_EC2_METADATA_DISABLED": "true",
          "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}


def test_code_from_an_s3_sourcedir_tarball_is_unpacked_into_the_code_folder(tmp_path, s3_endpoint):
    import boto3

    s3 = boto3.client("s3", region_name="eu-west-1", endpoint_url=s3_endpoint, **{
        "aws_access_key_id": "testing", "aws_secret_access_key": "testing"})
    s3.create_bucket(Bucket="sm-code", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    s3.put_object(Bucket="sm-code", Key="job-1/source/sourcedir.tar.gz", Body=sourcedir.tarball({
        "train.py": "import helper\nhelper.hello()\n",
        "helper.py": "import os\ndef hello():\n    print('hello from', os.getcwd())\n"}))
    uri = "s3://sm-code/job-1/source/sourcedir.tar.gz"
    # The region comes with the job (sagemaker_region), as the SDK sends it.
    base = script_job(tmp_path, uri, {"sagemaker_region": '"eu-west-1"'})
    done = run_train(base, S3_ENDPOINT_URL=s3_endpoint, **S3_ENV)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"hello from {base / 'code'}" in done.stdout
    assert (base / "code" / "helper.py").is_file()

    missing = script_job(tmp_path / "missing", "s3://sm-code/job-2/source/sourcedir.tar.gz",
                         {"sagemaker_region": '"eu-west-1"'})
    assert run_train(missing, S3_ENDPOINT_URL=s3_endpoint, **S3_ENV).returncode == 1
    assert failure(missing).startswith("cannot download the code from s3://sm-code/job-2/source/sourcedir.tar.gz: "
                                       "no such object")


# -- requirements.txt and packages, in a virtualenv of their own ----------------------------------------

@pytest.fixture(scope="module")
def scratch_python(tmp_path_factory) -> str:
    """A virtualenv that sees the project's packages but installs into itself (pip as the image's)."""
    venv = tmp_path_factory.mktemp("script-venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = next(venv.glob("lib/python3*/site-packages"))
    project_site = next((project.ROOT / ".venv").glob("lib/python3*/site-packages"))
    # An `import` line in a .pth file runs at start-up: the project's site folder with its own .pth files
    # (the editable installs), after this venv's.
    (site / "project.pth").write_text(f"import site; site.addsitedir({str(project_site)!r})\n")
    return str(venv / "bin" / "python")


def _wheel(folder: Path, name: str) -> Path:
    from tests.unit.test_usercode import _wheel as make_wheel

    return make_wheel(folder, name)


def test_requirements_are_installed_before_the_script_runs(tmp_path, scratch_python):
    code = tmp_path / "code"
    code.mkdir()
    wheel = _wheel(code, "byoc_script_dep")
    base = script_job(tmp_path, {"requirements.txt": f"--no-index\n./{wheel.name}\n",
                                 "train.py": "import byoc_script_dep\nprint('dep', byoc_script_dep.VERSION)\n"})
    done = run_train(base, python=scratch_python)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Successfully installed" in done.stdout and "dep 0.1" in done.stdout


def test_a_failing_install_is_the_reason_and_the_script_never_runs(tmp_path, scratch_python):
    base = script_job(tmp_path, {"requirements.txt": "--no-index\nbyoc-no-such-package==1.0\n",
                                 "train.py": "open('ran', 'w')\n"})
    done = run_train(base, python=scratch_python)
    assert done.returncode == 1
    first = failure(base).splitlines()[0]
    assert first.startswith("pip could not install requirements.txt (exit 1): ERROR:"), first
    assert "byoc-no-such-package" in first
    assert not (tmp_path / "code" / "ran").exists()


def test_a_folder_with_setup_py_is_installed_and_run_as_a_module(tmp_path, scratch_python):
    base = script_job(tmp_path, {
        "setup.py": "from setuptools import setup\n"
                    "setup(name='byoc-user-pkg', version='1.0', py_modules=['trainlib'])\n",
        "trainlib.py": "WHERE = 'installed'\n",
        "train.py": "import sys, trainlib\nprint('module', __name__, trainlib.WHERE, sys.argv[1:])\n",
    }, {"epochs": "1"})
    done = run_train(base, python=scratch_python, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "module __main__ installed ['--epochs', '1']" in done.stdout
    listed = subprocess.run([scratch_python, "-m", "pip", "show", "byoc-user-pkg"], capture_output=True, text=True)
    assert "Version: 1.0" in listed.stdout


# -- MXNet's parameter server ------------------------------------------------------------------------------

HOSTS = ["127.0.0.1", "127.0.0.2"]
DIST_SCRIPT = """
    import json, os
    import mxnet as mx
    kv = mx.kv.create("dist_sync")
    kv.init(3, mx.nd.zeros((2,)))
    kv.push(3, mx.nd.ones((2,)) * (kv.rank + 1))
    out = mx.nd.zeros((2,))
    kv.pull(3, out=out)
    print(f"host={os.environ['SM_CURRENT_HOST']}; rank={kv.rank}; workers={kv.num_workers}; "
          f"sum={out.asnumpy().tolist()}; root={os.environ['DMLC_PS_ROOT_URI']}:{os.environ['DMLC_PS_ROOT_PORT']};",
          flush=True)
"""


def _hosts(tmp_path: Path, script: str, port: int, **hps: str) -> list[Path]:
    bases = []
    for host in HOSTS:
        config = {"resourceconfig.json": {"current_host": host, "hosts": HOSTS, "network_interface_name": "lo"}}
        bases.append(script_job(tmp_path / host, {"train.py": script}, {
            "sagemaker_parameter_server_enabled": "true", "_ps_port": str(port), **hps}, config=config))
    return bases


@pytest.mark.slow
def test_the_parameter_server_joins_two_hosts_scripts_in_one_dist_sync_cluster(tmp_path):
    port = free_port_pair(HOSTS)
    bases = _hosts(tmp_path, DIST_SCRIPT, port)
    procs = [subprocess.Popen([sys.executable, str(project.TRAIN)], env=jobs.train_env(b), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for b in bases]
    try:
        outputs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    ranks = set()
    for host, proc, out in zip(HOSTS, procs, outputs):
        assert proc.returncode == 0, out
        line = next(line for line in out.splitlines() if line.startswith(f"host={host};"))
        # Both workers pushed (1 and 2) into one server: each pulled the sum.
        assert f"workers=2; sum=[3.0, 3.0]; root=127.0.0.1:{port};" in line, line
        ranks.add(line.split("rank=")[1][0])
    assert ranks == {"0", "1"}


@pytest.mark.slow
def test_hosts_wait_for_each_other_then_all_end(tmp_path):
    # The first host's script goes on after the others' have ended (saving its model, say; SDK local mode
    # stops every container as soon as one exits): the others wait for it, and then every host ends. The
    # first script ends only when the test lets it, once the second host is seen waiting.
    release = tmp_path / "release-the-first-host"
    script = DIST_SCRIPT + textwrap.indent(textwrap.dedent(f"""
        import time
        del kv  # leaves the cluster now (ps-lite's shutdown waits for every worker): the rest is this host's
        if os.environ["SM_CURRENT_HOST"] == json.loads(os.environ["SM_HOSTS"])[0]:
            while not os.path.exists({str(release)!r}):
                time.sleep(0.05)
    """), "    ")
    bases = _hosts(tmp_path, script, free_port_pair(HOSTS))
    logs = [tmp_path / f"{host}.log" for host in HOSTS]
    procs = []
    try:
        for base, log in zip(bases, logs):
            with open(log, "w") as out:
                procs.append(subprocess.Popen([sys.executable, str(project.TRAIN)], env=jobs.train_env(base),
                                              stdout=out, stderr=subprocess.STDOUT, text=True))
        ended: dict[int, float] = {}  # when each `train` ended, as a thread waiting on it saw it

        def note_the_end(i: int) -> None:
            procs[i].wait()
            ended[i] = time.monotonic()

        watchers = [threading.Thread(target=note_the_end, args=(i,), daemon=True) for i in range(len(procs))]
        for watcher in watchers:
            watcher.start()
        wait_until(lambda: "waiting for the other hosts' scripts to end" in logs[1].read_text(), timeout=240,
                   what="the second host to wait for the first", process=procs[1], details=logs[1].read_text)
        released = time.monotonic()
        release.touch()
        for watcher in watchers:
            watcher.join(120)
    finally:
        for p in procs:
            p.kill()
    for proc, log in zip(procs, logs):
        out = log.read_text()
        assert proc.returncode == 0, out
        assert "waiting for the other hosts' scripts to end" in out, out
    # The second host's script was done long before, but its `train` ended only after the first's script.
    assert ended[1] > released, (ended, released)


@pytest.mark.slow
def test_a_dead_peer_fails_the_survivors_script_instead_of_hanging(tmp_path):
    # After one exchange through the cluster each script stays in it, as a long training would.
    script = DIST_SCRIPT.replace("    print(", "    print('in the cluster', flush=True)\n    import time\n"
                                             "    time.sleep(3600)\n    print(", 1)
    bases = _hosts(tmp_path, script, free_port_pair(HOSTS), _peer_timeout="6")
    procs = [subprocess.Popen([sys.executable, str(project.TRAIN)], env=jobs.train_env(b), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for b in bases]
    try:
        # Once the second host's script has been through the cluster, kill that host as a lost instance would
        # vanish.
        seen: list[str] = []
        assert any(line.strip() == "in the cluster" for line in procs[1].stdout if not seen.append(line)), \
            "".join(seen)
        procs[1].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        out, _ = procs[0].communicate(timeout=90)
        waited = time.monotonic() - killed_at
    finally:
        for p in procs:
            p.kill()
    assert procs[0].returncode == 1, out
    assert failure(bases[0]).startswith("host 127.0.0.2 stopped answering"), failure(bases[0])
    assert waited < 6 + 20, waited
