"""Which handler serves (mxnet_byoc.serve.selection): the user's script, AWS's default handlers or the built-in
digit model; the code fetched and its requirements installed once, before any worker loads."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer
from serving_models import export_indicator_model

from devkit.script_models import AWS_ANSWER, TRANSFORM_SCRIPT, copy_aws_model, write_script
from mxnet_byoc import usercode
from mxnet_byoc.serve import mxnet_defaults, script, selection

JSON = "application/json"
BUILTIN = object()


def builtin(model_dir: Path) -> object:
    return BUILTIN


def choose(model_dir: Path, **env: str):
    return selection.loader(builtin, JSON, model_dir, env)


@pytest.fixture
def aws_model(tmp_path) -> Path:
    return copy_aws_model(tmp_path / "model")


@pytest.fixture(autouse=True)
def pythonpath(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "")  # selection prepends the code's folder; keep it per test


def test_our_trained_model_without_code_is_the_built_in_path(tmp_path):
    model_dir = export_indicator_model(tmp_path / "model")
    assert choose(model_dir)(model_dir) is BUILTIN


def test_mxnets_layout_without_our_metadata_gets_the_default_handlers(aws_model):
    handler = choose(aws_model)(aws_model)
    assert isinstance(handler, mxnet_defaults.DefaultHandler)
    assert handler.invoke(b"[[1, 2]]", JSON, JSON) == (AWS_ANSWER, JSON)


def test_a_model_in_no_known_layout_is_left_to_the_built_in_path(tmp_path):
    (tmp_path / "model").mkdir()
    assert choose(tmp_path / "model")(tmp_path / "model") is BUILTIN


def test_code_in_the_model_is_script_mode_even_with_our_metadata(tmp_path):
    model_dir = export_indicator_model(tmp_path / "model")
    write_script(model_dir / "code", "def model_fn(d):\n    return 7\n\ndef transform_fn(m, b, c, a):\n"
                                     "    return str(m)\n")
    handler = choose(model_dir)(model_dir)
    assert isinstance(handler, script.ScriptHandler) and handler.invoke(b"x", "text/plain", None) == (b"7", JSON)
    assert os.environ["PYTHONPATH"].split(os.pathsep)[0] == str(model_dir / "code")


def test_sagemaker_program_names_the_module(aws_model):
    write_script(aws_model / "code", TRANSFORM_SCRIPT, "serve_me.py")
    handler = choose(aws_model, SAGEMAKER_PROGRAM="serve_me.py")(aws_model)
    assert handler.invoke(b"[[1, 2]]", JSON, JSON)[0] == b'{"outputs": [[4.9999918937683105]]}'


def test_sagemaker_program_without_any_code_says_where_it_looked(aws_model):
    load = choose(aws_model, SAGEMAKER_PROGRAM="inference.py")
    with pytest.raises(script.ScriptError, match=r"code/inference.py does not exist"):
        load(aws_model)


def test_a_submit_directory_folder(tmp_path, aws_model):
    write_script(tmp_path / "src", TRANSFORM_SCRIPT)
    handler = choose(aws_model, SAGEMAKER_PROGRAM="inference.py", SAGEMAKER_SUBMIT_DIRECTORY=str(tmp_path / "src"))
    assert isinstance(handler(aws_model), script.ScriptHandler)


def test_a_submit_directory_the_container_lacks_falls_back_to_the_models_code(tmp_path, aws_model):
    """SDK local mode sends the host's file:// path of source_dir; the code is in the repacked model too."""
    write_script(aws_model / "code", TRANSFORM_SCRIPT)
    load = choose(aws_model, SAGEMAKER_PROGRAM="/home/me/src/inference.py",
                  SAGEMAKER_SUBMIT_DIRECTORY="file:///home/me/src")
    assert isinstance(load(aws_model), script.ScriptHandler)


def test_requirements_are_installed_once_before_the_workers_load(tmp_path, aws_model, monkeypatch):
    installed = []
    monkeypatch.setattr(usercode, "install_requirements", lambda folder: installed.append(folder))
    write_script(aws_model / "code", TRANSFORM_SCRIPT)
    (aws_model / "code" / "requirements.txt").write_text("tabulate\n")
    load = choose(aws_model)
    assert installed == [aws_model / "code"]
    for _ in range(3):  # three workers
        load(aws_model)
    assert installed == [aws_model / "code"]


def test_code_that_cannot_be_had_is_every_loads_reason(tmp_path, aws_model):
    load = choose(aws_model, SAGEMAKER_PROGRAM="inference.py",
                  SAGEMAKER_SUBMIT_DIRECTORY=str(tmp_path / "sourcedir.tar.gz"))
    with pytest.raises(usercode.UserCodeError, match="sourcedir.tar.gz does not exist"):
        load(aws_model)


def test_a_failing_pip_is_the_reason(tmp_path, aws_model, monkeypatch):
    def fail(folder):
        raise usercode.UserCodeError("pip could not install requirements.txt (exit 1): ERROR: no such package")

    monkeypatch.setattr(usercode, "install_requirements", fail)
    write_script(aws_model / "code", TRANSFORM_SCRIPT)
    with pytest.raises(usercode.UserCodeError, match="no such package"):
        choose(aws_model)(aws_model)


def test_an_s3_submit_directory(tmp_path, aws_model, monkeypatch):
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                            "AWS_REGION": "us-west-2", "AWS_EC2_METADATA_DISABLED": "true",
                            usercode.S3_ENDPOINT_URL: f"http://{host}:{port}"}.items():
            monkeypatch.setenv(name, value)
        s3 = boto3.client("s3", endpoint_url=f"http://{host}:{port}")
        s3.create_bucket(Bucket="code", CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w:gz") as tar:
            source = write_script(tmp_path / "src", TRANSFORM_SCRIPT)
            tar.add(source, "inference.py")
        s3.put_object(Bucket="code", Key="model/sourcedir.tar.gz", Body=archive.getvalue())
        shutil.rmtree(tmp_path / "src")
        load = choose(aws_model, SAGEMAKER_PROGRAM="inference.py",
                      SAGEMAKER_SUBMIT_DIRECTORY="s3://code/model/sourcedir.tar.gz")
    finally:
        server.stop()
    handler = load(aws_model)
    assert handler.invoke(b"[[1, 2]]", JSON, JSON)[0] == b'{"outputs": [[4.9999918937683105]]}'
