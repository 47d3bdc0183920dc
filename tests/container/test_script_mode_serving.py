"""Script mode for serving in the real image: the SageMaker Python SDK's MXNetModel and Model in local mode
(the SDK repacks entry_point and source_dir into model.tar.gz's code/), AWS's default handlers in a local
batch transform, and `docker run` with the code as an s3:// tarball on moto's S3 (127.0.0.1, host network)
whose requirements.txt pip installs from PyPI at start.

The model is a regression trained here with MXNet's Module API (y = 3 x0 - 2 x1 + 0.5, input (1, 2),
LinearRegressionOutput head), in MXNet's layout without our metadata.json. Offline as test_local_mode.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from devkit.net import free_port
from devkit.script_models import THREE_FUNCTIONS_SCRIPT, TRANSFORM_SCRIPT, train_regression, write_script
from devkit.servers import serving
from tests.container.test_local_mode import ROLE, TELEMETRY_OPT_OUT, offline  # noqa: F401 (a fixture)

pytestmark = [pytest.mark.container, pytest.mark.slow]
SDK_LOCAL_MODE = pytest.mark.usefixtures("offline")

# Offline, the SDK must not look for its default bucket (STS and S3): with a code_location it has one. Local
# mode with local code uploads nothing there.
CODE_LOCATION = "s3://local-mode-code/unused"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")  # this machine's bundle, with its TLS proxy's CA


@pytest.fixture(scope="module")
def container_root(tmp_path_factory) -> Path:
    """Where local mode keeps this module's compose folders: their label tells this module's containers
    from those of other tests running on the machine. They are all gone at the end."""
    root = tmp_path_factory.mktemp("local-mode")
    yield root
    mine = my_containers(root)
    if mine:
        subprocess.run(["docker", "rm", "-f", *mine], capture_output=True)
    assert not [cid for cid, state in mine.items() if state == "running"], "local mode left containers running"


def my_containers(root: Path) -> dict[str, str]:
    from byoctl.leftovers import local_mode_containers

    return {cid: state for cid, (state, folder) in local_mode_containers().items()
            if folder and Path(folder).is_relative_to(root)}


def local_session(root: Path):
    from sagemaker.local import LocalSession

    session = LocalSession(sagemaker_config=TELEMETRY_OPT_OUT)
    session.config = {"local": {"local_code": True, "serving_port": free_port(), "container_root": str(root)}}
    return session


@pytest.fixture(scope="module")
def regression(tmp_path_factory) -> Path:
    return train_regression(tmp_path_factory.mktemp("regression") / "model")


@pytest.fixture
def model_tar(regression, tmp_path) -> Path:
    """model.tar.gz of the regression, a fresh copy per test: local mode repacks file:// models in place."""
    path = tmp_path / "model.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for file in sorted(regression.iterdir()):
            tar.add(file, file.name)
    return path


@pytest.fixture(scope="module")
def expected(regression):
    """What AWS's default handlers answer for some rows: the Module's outputs, as lists of Python floats."""
    from mxnet_byoc.serve import mxnet_defaults
    from mxnet_byoc.serve.device import Device

    handler = mxnet_defaults.load_default(regression, Device())

    def answer(rows: list) -> list:
        return json.loads(handler.invoke(json.dumps(rows).encode(), "application/json", "application/json")[0])

    return answer


def mxnet_model(cpu_image: str, model_tar: Path, entry_point: Path, name: str, root: Path):
    from sagemaker.mxnet import MXNetModel

    return MXNetModel(model_data=f"file://{model_tar}", role=ROLE, entry_point=str(entry_point), image_uri=cpu_image,
                      framework_version="1.9.0", py_version="py38", code_location=CODE_LOCATION,
                      sagemaker_session=local_session(root), name=name)


@contextlib.contextmanager
def deployed(model, root: Path):
    """A local endpoint for `model`; afterwards the model and endpoint are deleted and no container is left."""
    predictor = model.deploy(initial_instance_count=1, instance_type="local", endpoint_name=model.name)
    try:
        yield predictor
    finally:
        predictor.delete_model()
        predictor.delete_endpoint()
    assert "running" not in my_containers(root).values()


@SDK_LOCAL_MODE
def test_mxnet_model_with_model_fn_and_transform_fn(cpu_image, container_root, model_tar, tmp_path, expected):
    entry = write_script(tmp_path / "src", TRANSFORM_SCRIPT)
    with deployed(mxnet_model(cpu_image, model_tar, entry, "script-transform-fn", container_root),
                  container_root) as predictor:
        answer = predictor.predict([[1, 2], [0, 0]])
    assert answer == {"outputs": expected([[1, 2], [0, 0]])}
    np.testing.assert_allclose(answer["outputs"], [[-0.5], [0.5]], atol=1e-4)


@SDK_LOCAL_MODE
def test_mxnet_model_with_an_empty_script_gets_awss_default_handlers(cpu_image, container_root, model_tar, tmp_path,
                                                                    expected):
    entry = write_script(tmp_path / "src", "")
    rows = [[1, 2], [0.25, -4], [3, 3]]
    with deployed(mxnet_model(cpu_image, model_tar, entry, "script-default-handlers", container_root),
                  container_root) as predictor:
        answers = predictor.predict(rows), predictor.predict([[1, 2]])
    assert answers[0] == expected(rows)
    np.testing.assert_allclose(answers[1], [[-0.5]], atol=1e-4)


@SDK_LOCAL_MODE
def test_mxnet_model_with_input_predict_and_output_fn(cpu_image, container_root, model_tar, tmp_path):
    entry = write_script(tmp_path / "src", THREE_FUNCTIONS_SCRIPT)
    with deployed(mxnet_model(cpu_image, model_tar, entry, "script-three-functions", container_root),
                  container_root) as predictor:
        answer = predictor.predict({"values": [1, 2.5]})
    assert answer == {"doubled": [2.0, 5.0], "gpu_id": None, "model_dir": "/opt/ml/model"}


@SDK_LOCAL_MODE
def test_generic_model_with_entry_point_and_predictor_cls(cpu_image, container_root, model_tar, tmp_path, expected):
    """SDK 2's generic Model: in local mode its source_dir is mounted as the SAGEMAKER_SUBMIT_DIRECTORY (with no
    source_dir the code would reach the container only through S3)."""
    from sagemaker.deserializers import JSONDeserializer
    from sagemaker.model import Model
    from sagemaker.predictor import Predictor
    from sagemaker.serializers import JSONSerializer

    write_script(tmp_path / "src", TRANSFORM_SCRIPT, "serve_regression.py")
    model = Model(image_uri=cpu_image, model_data=f"file://{model_tar}", role=ROLE, entry_point="serve_regression.py",
                  source_dir=str(tmp_path / "src"), predictor_cls=Predictor, name="script-generic-model",
                  code_location=CODE_LOCATION, sagemaker_session=local_session(container_root))
    with deployed(model, container_root) as predictor:
        assert isinstance(predictor, Predictor)
        predictor.serializer, predictor.deserializer = JSONSerializer(), JSONDeserializer()
        answer = predictor.predict([[1, 2]])
    assert answer == {"outputs": expected([[1, 2]])}


@SDK_LOCAL_MODE
def test_local_batch_transform_with_the_default_handlers_on_a_csv_file(cpu_image, container_root, model_tar, tmp_path,
                                                                       expected):
    rows = np.random.default_rng(3).normal(size=(300, 2)).round(3)
    (tmp_path / "input").mkdir()
    np.savetxt(tmp_path / "input" / "rows.csv", rows, fmt="%.3f", delimiter=",")
    entry = write_script(tmp_path / "src", "")
    model = mxnet_model(cpu_image, model_tar, entry, "script-transform-model", container_root)
    transformer = model.transformer(instance_count=1, instance_type="local", strategy="MultiRecord",
                                    assemble_with="Line", accept="text/csv", max_payload=1,
                                    output_path=f"file://{tmp_path / 'output'}")
    try:
        transformer.transform(f"file://{tmp_path / 'input' / 'rows.csv'}", content_type="text/csv",
                              split_type="Line", job_name="script-default-transform", wait=True, logs=False)
    finally:
        model.delete_model()
    answers = np.array([float(v) for v in (tmp_path / "output" / "rows.csv.out").read_text().split()])
    np.testing.assert_allclose(answers, 3 * rows[:, 0] - 2 * rows[:, 1] + 0.5, atol=1e-3)
    assert answers.tolist() == [row[0] for row in expected(rows.tolist())]
    assert "running" not in my_containers(container_root).values()


REQUIREMENTS_SCRIPT = """
    import json

    import tabulate  # installed from requirements.txt at start


    def model_fn(model_dir):
        return tabulate.__version__


    def transform_fn(version, body, content_type, accept):
        table = tabulate.tabulate(json.loads(body), tablefmt="plain")
        return json.dumps({"tabulate": version, "table": table}), "application/json"
"""


def test_code_from_an_s3_submit_directory_with_requirements_from_pypi(cpu_image, regression, tmp_path):
    """docker run --network host: SAGEMAKER_SUBMIT_DIRECTORY=s3://... on moto's S3 (127.0.0.1); pip installs
    requirements.txt from PyPI once, through this machine's TLS proxy (its CA mounted, verification on)."""
    import boto3
    from moto.server import ThreadedMotoServer

    write_script(tmp_path / "src", REQUIREMENTS_SCRIPT)
    (tmp_path / "src" / "requirements.txt").write_text("tabulate==0.9.0\n")
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        for file in ("inference.py", "requirements.txt"):
            tar.add(tmp_path / "src" / file, file)
    model_dir = tmp_path / "model"
    shutil.copytree(regression, model_dir)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port())
    server.start()
    try:
        host, port = server.get_host_and_port()
        s3 = boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-west-2",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
        s3.create_bucket(Bucket="models", CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
        s3.put_object(Bucket="models", Key="regression/sourcedir.tar.gz", Body=archive.getvalue())
        env = {"SAGEMAKER_PROGRAM": "inference.py", "SAGEMAKER_SUBMIT_DIRECTORY": "s3://models/regression/"
               "sourcedir.tar.gz", "S3_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-west-2", "AWS_EC2_METADATA_DISABLED": "true",
               "SAGEMAKER_MODEL_SERVER_WORKERS": "2", "PIP_CERT": "/etc/ssl/certs/host-ca.crt"}
        started = time.monotonic()
        with serving(cpu_image, model_dir, env=env, mounts={HOST_CA: "/etc/ssl/certs/host-ca.crt:ro"}) as serve:
            print(f"s3 code + pip install + 2 workers ready in {time.monotonic() - started:.1f} s")
            answer = requests.post(serve.url("/invocations"), data=json.dumps([[1, 2], [3, 4]]),
                                   headers={"Content-Type": "application/json"}, timeout=30)
            logs = serve.output()
    finally:
        server.stop()
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"tabulate": "0.9.0", "table": "1  2\n3  4"}
    assert logs.count("Successfully installed tabulate-0.9.0") == 1, logs
    assert "downloading the code from s3://models/regression/sourcedir.tar.gz" in logs
