"""Script mode in the real image: the user's own MXNet script, as with AWS's MXNet containers.

Through the SageMaker Python SDK's local mode (offline, as test_local_mode.py): a generic
`Estimator(image_uri, entry_point, source_dir)` with the README's Gluon example, `sagemaker.mxnet.MXNet`
with the README's Module example (whose model this image's `serve` then answers with), and two hosts with
the parameter server on and kvstore="dist_sync". Through `docker run`: code from an s3:// sourcedir.tar.gz
(moto's S3 server on 127.0.0.1, reached over the host network) with a requirements.txt installed from
PyPI, a failing install, and `docker stop` reaching the script. Small data (6,000 training images), one
epoch.
"""

from __future__ import annotations

import json
import re
import tarfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from devkit import idx, net, sourcedir
from devkit.docker import docker_run
from devkit.net import free_port
from devkit.project import ROOT
from devkit.servers import serving
from devkit.shell import sh
from tests.container import test_local_mode as one_host_tests
from tests.container.test_local_mode import ROLE, local_session
from tests.container.test_local_mode_distributed import _job_containers, host_lines, run_fit

pytestmark = [pytest.mark.container, pytest.mark.slow]

offline = one_host_tests.offline

EXAMPLES = ROOT / "examples" / "script-mode"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")  # this machine's CA bundle, proxy CA included


@pytest.fixture(scope="module")
def compose_containers(cpu_image):
    """Removes the containers this module's local-mode jobs leave behind (and only those: other sessions may
    run local mode on the same engine); none may still run."""
    before = _job_containers(cpu_image)
    yield
    new = sorted(_job_containers(cpu_image) - before)
    states = {cid: sh("docker", "inspect", "--format", "{{.State.Status}}", cid, check=False).stdout.strip()
              for cid in new}
    if new:
        sh("docker", "rm", "-f", *new, check=False)
    assert not [cid for cid, state in states.items() if state == "running"], states


@pytest.fixture(scope="module")
def small_mnist(mnist_dir, tmp_path_factory) -> Path:
    """training/ (6,000 images) and test/ (1,000), as IDX files named images.idx and labels.idx."""
    return idx.write_subsets(mnist_dir, tmp_path_factory.mktemp("script-data"), 6000, 1000)


@pytest.fixture(scope="module")
def inputs(small_mnist) -> dict[str, str]:
    return {name: f"file://{small_mnist / name}" for name in ("training", "test")}


def readme_metric_definitions() -> dict[str, list[dict[str, str]]]:
    """The metric definitions the README's script-mode section gives for each example."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("<!-- section: script-mode")[1].split("<!-- /section: script-mode")[0]
    block = re.search(r"```python\n(gluon_metric_definitions = .*?)```", section, re.S)
    assert block, "the script-mode section lacks its metric definitions"
    namespace: dict = {}
    exec(block.group(1), namespace)  # two list literals
    return {"gluon": namespace["gluon_metric_definitions"], "module": namespace["module_metric_definitions"]}


def metric_values(log: str, definitions: list[dict[str, str]]) -> dict[str, list[float]]:
    """What SageMaker would record: every match of each regex in the job's log lines."""
    return {d["Name"]: [float(m.group(1)) for m in re.finditer(d["Regex"], log)] for d in definitions}


def _members(tar_path: Path) -> dict[str, bytes]:
    with tarfile.open(tar_path) as tar:
        return {m.name.lstrip("./"): tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def _accuracy(model: dict[str, bytes], folder: Path, small_mnist: Path) -> float:
    """The saved model's accuracy on the test channel, with plain MXNet outside the image."""
    import mxnet as mx

    folder.mkdir()
    for name, data in model.items():
        (folder / name).write_bytes(data)
    net = mx.gluon.SymbolBlock.imports(str(folder / "model-symbol.json"), ["data"],
                                       str(folder / "model-0000.params"))
    images = idx.read_idx(small_mnist / "test" / "images.idx")
    labels = idx.read_idx(small_mnist / "test" / "labels.idx")
    scores = net(mx.nd.array(images[:, None] / np.float32(255))).asnumpy()
    return float((scores.argmax(axis=1) == labels).mean())


def test_a_gluon_script_through_the_generic_estimator(offline, cpu_image, inputs, small_mnist,
                                                      compose_containers, tmp_path):
    from sagemaker.estimator import Estimator

    definitions = readme_metric_definitions()["gluon"]
    estimator = Estimator(image_uri=cpu_image, role=ROLE, instance_count=1, instance_type="local",
                          entry_point="train.py", source_dir=str(EXAMPLES / "gluon"),
                          hyperparameters={"epochs": 1, "batch-size": 100}, output_path=f"file://{tmp_path}",
                          metric_definitions=definitions, sagemaker_session=local_session(free_port()))
    run = run_fit(estimator, inputs, "script-mode-gluon")
    print(f"Gluon script, generic Estimator, local mode: {run.seconds:.1f} s")
    [state] = run.containers.values()
    assert state["ExitCode"] == 0
    model = _members(tmp_path / "model.tar.gz")
    assert set(model) == {"model-symbol.json", "model-0000.params", "model-shapes.json"}
    assert "success" in _members(tmp_path / "output.tar.gz")
    values = metric_values(run.log, definitions)
    assert len(values["train_accuracy"]) == 1 and len(values["test_accuracy"]) == 1, values
    # The model the script saved is the one it measured.
    accuracy = _accuracy(model, tmp_path / "model", small_mnist)
    assert accuracy > 0.8 and abs(accuracy - values["test_accuracy"][0]) < 1e-3, (accuracy, values)


def test_a_module_script_through_the_mxnet_estimator_then_served_by_the_image(offline, cpu_image, inputs,
                                                                              small_mnist, compose_containers,
                                                                              tmp_path):
    from sagemaker.mxnet import MXNet

    definitions = readme_metric_definitions()["module"]
    estimator = MXNet(image_uri=cpu_image, framework_version="1.9.0", py_version="py38", role=ROLE,
                      instance_count=1, instance_type="local", entry_point="train.py",
                      source_dir=str(EXAMPLES / "module"), hyperparameters={"epochs": 1},
                      output_path=f"file://{tmp_path}", metric_definitions=definitions,
                      sagemaker_session=local_session(free_port()))
    run = run_fit(estimator, inputs, "script-mode-module")
    print(f"Module script, MXNet estimator, local mode: {run.seconds:.1f} s")
    model = _members(tmp_path / "model.tar.gz")
    assert set(model) == {"model-symbol.json", "model-0000.params", "model-shapes.json"}  # training_utils.save
    assert json.loads(model["model-shapes.json"]) == [{"name": "data", "shape": [100, 1, 28, 28]}]
    values = metric_values(run.log, definitions)
    assert len(values["train_accuracy"]) == 1 and values["validation_accuracy"][0] > 0.8, values

    # This image's `serve` answers with the Module model through AWS's default handlers (no metadata.json of
    # ours): rows shaped like model-shapes.json's input, scaled as the script scaled them; its raw outputs back.
    model_dir = tmp_path / "served"
    model_dir.mkdir()
    for name, data in model.items():
        (model_dir / name).write_bytes(data)
    images = idx.read_idx(small_mnist / "test" / "images.idx")[:200]
    labels = idx.read_idx(small_mnist / "test" / "labels.idx")[:200]
    rows = (images[:, None] / 255.0).tolist()
    with serving(cpu_image, model_dir) as server:
        status, body = net.request(server.url("/invocations"), json.dumps(rows).encode(),
                                   {"Content-Type": "application/json"}, timeout=60)
    assert status == 200, body[:500]
    outputs = np.array(json.loads(body))
    assert outputs.shape == (200, 10)
    assert (outputs.argmax(axis=1) == labels).mean() > 0.8


def test_two_hosts_with_the_parameter_server_train_one_dist_sync_model(offline, cpu_image, inputs,
                                                                       compose_containers, tmp_path):
    from sagemaker.mxnet import MXNet

    estimator = MXNet(image_uri=cpu_image, framework_version="1.9.0", py_version="py38", role=ROLE,
                      instance_count=2, instance_type="local", entry_point="train.py",
                      source_dir=str(EXAMPLES / "gluon"),
                      hyperparameters={"epochs": 1, "batch-size": 100, "kvstore": "dist_sync"},
                      distribution={"parameter_server": {"enabled": True}}, output_path=f"file://{tmp_path}",
                      sagemaker_session=local_session(free_port()))
    run = run_fit(estimator, inputs, "script-mode-two-hosts")
    print(f"Gluon script on two hosts, parameter server, local mode: {run.seconds:.1f} s")
    hosts = sorted(run.containers)
    assert len(hosts) == 2, hosts
    for host in hosts:
        lines = host_lines(run.log, host)
        epochs = [line for line in lines if line.startswith("epoch=1; train_accuracy=")]
        assert epochs == [line for line in epochs if line.endswith(f"host={host};")] and len(epochs) == 1, lines[-30:]
        assert any("parameter server: scheduler" in line and "2 worker(s)" in line for line in lines), lines[-30:]
        assert run.containers[host]["ExitCode"] == 0, (host, run.container_logs[host][-3000:])
    assert set(_members(tmp_path / "model.tar.gz")) == {"model-symbol.json", "model-0000.params",
                                                        "model-shapes.json"}


# -- docker run: code from S3, requirements from PyPI, docker stop --------------------------------------

@pytest.fixture(scope="module")
def s3(docker_engine):
    """moto's S3 server on 127.0.0.1; containers on the host network reach it there."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port())
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client("s3", region_name="us-east-1", endpoint_url=endpoint, aws_access_key_id="testing",
                          aws_secret_access_key="testing")
    client.create_bucket(Bucket="sagemaker-code")
    yield endpoint, client
    server.stop()


def _script_job(base: Path, submit_directory: str, **hyperparameters: str) -> Path:
    (base / "input" / "config").mkdir(parents=True)
    (base / "input" / "config" / "hyperparameters.json").write_text(json.dumps({
        "sagemaker_program": '"train.py"', "sagemaker_submit_directory": json.dumps(submit_directory),
        "sagemaker_region": '"us-east-1"', **hyperparameters}))
    return base


def _with_s3(endpoint: str) -> dict[str, str]:
    # pip inside the container trusts this machine's CA bundle (a TLS-inspecting proxy's CA among them).
    return {"S3_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "PIP_CERT": "/etc/ssl/host-ca.crt"}


def test_code_from_s3_with_requirements_from_pypi(cpu_image, s3, tmp_path):
    endpoint, client = s3
    client.put_object(Bucket="sagemaker-code", Key="job-1/source/sourcedir.tar.gz", Body=sourcedir.tarball({
        "requirements.txt": "tabulate==0.9.0\n",
        "train.py": """
            import os, sys
            from tabulate import tabulate
            print(tabulate([[os.environ["SM_MODULE_DIR"], os.getcwd(), " ".join(sys.argv[1:])]]))
        """}))
    base = _script_job(tmp_path / "ml", "s3://sagemaker-code/job-1/source/sourcedir.tar.gz", epochs="1")
    run = docker_run(cpu_image, "train", mounts={base: "/opt/ml", HOST_CA: "/etc/ssl/host-ca.crt"},
                     env=_with_s3(endpoint), timeout=600)
    assert run.returncode == 0, run.log[-4000:]
    assert "Successfully installed tabulate-0.9.0" in run.log
    assert re.search(r"s3://sagemaker-code/job-1/source/sourcedir\.tar\.gz\s+/opt/ml/code\s+--epochs 1", run.log), \
        run.log[-3000:]
    assert (base / "output" / "success").is_file()


def test_a_failing_install_from_pypi_is_the_jobs_reason(cpu_image, s3, tmp_path):
    endpoint, client = s3
    client.put_object(Bucket="sagemaker-code", Key="job-2/source/sourcedir.tar.gz", Body=sourcedir.tarball({
        "requirements.txt": "tabulate==0.0.404\n", "train.py": "print('never')\n"}))
    base = _script_job(tmp_path / "ml", "s3://sagemaker-code/job-2/source/sourcedir.tar.gz")
    run = docker_run(cpu_image, "train", mounts={base: "/opt/ml", HOST_CA: "/etc/ssl/host-ca.crt"},
                     env=_with_s3(endpoint), timeout=600)
    assert run.returncode == 1, run.log[-3000:]
    reason = (base / "output" / "failure").read_text().splitlines()[0]
    assert reason.startswith("pip could not install requirements.txt (exit 1): ERROR:"), reason
    assert "tabulate==0.0.404" in reason, reason
    assert "never" not in run.log


def test_docker_stop_reaches_the_script_and_the_job_ends_as_stopped(cpu_image, tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "train.py").write_text(textwrap.dedent("""
        import os, signal, sys, time
        def stop(signum, frame):
            open(os.path.join(os.environ["SM_OUTPUT_DATA_DIR"], "got-sigterm"), "w").close()
            sys.exit(0)
        signal.signal(signal.SIGTERM, stop)
        print("ready", flush=True)
        while True:
            time.sleep(0.1)
    """))
    base = _script_job(tmp_path / "ml", "/opt/ml/code")
    name = f"mxnet-byoc-script-stop-{free_port()}"
    sh("docker", "run", "-d", "--name", name, "-v", f"{base}:/opt/ml", "-v", f"{code}:/opt/ml/code", cpu_image,
       "train")
    try:
        deadline = time.monotonic() + 120
        while "ready" not in sh("docker", "logs", name).stdout and time.monotonic() < deadline:
            time.sleep(0.5)
        sh("docker", "stop", "-t", "60", name, timeout=90)
        state = json.loads(sh("docker", "inspect", "--format", "{{json .State}}", name).stdout)
    finally:
        sh("docker", "rm", "-f", name, check=False)
    assert state["ExitCode"] == 143, state
    assert (base / "output" / "data" / "got-sigterm").is_file()
    assert (base / "output" / "failure").read_text().startswith(
        "Training job stopped: SIGTERM received and passed on to train.py, which exited with code 0")
