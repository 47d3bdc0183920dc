"""README's SDK 3 ModelTrainer example asks for the training job that `byoctl train` asks for.

The README block runs as written, with ModelTrainer's submission replaced by capturing the request it
would send (`_create_training_job_args(boto3=True)`, what `train()` hands to CreateTrainingJob); byoctl's
request is captured from a stubbed client. They differ only where the README says they do.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/mxnet-byoc:cpu"
ROLE = "arn:aws:iam::123456789012:role/SageMakerExecutionRole"


def readme_block(marker: str) -> str:
    readme = (ROOT / "README.md").read_text()
    found = re.search(rf"<!-- {marker} -->\n```python\n(.*?)```", readme, re.S)
    assert found, f"README.md has no python block after <!-- {marker} -->"
    return found.group(1)


def model_trainer_request(monkeypatch) -> dict:
    from sagemaker.train import ModelTrainer

    from mxnet_byoc.train.metrics import metric_definitions

    captured = {}

    def capture(self, input_data_config=None, **_):
        captured.update(self._create_training_job_args(input_data_config=input_data_config, boto3=True))

    monkeypatch.setattr(ModelTrainer, "train", capture)
    monkeypatch.setenv("SAGEMAKER_VALIDATE_ROLE", "false")  # as the README says: else IAM is asked
    exec(readme_block("sdk3-model-trainer"), {"uri": IMAGE, "metric_definitions": metric_definitions()})
    return captured


def byoctl_request() -> dict:
    import boto3
    from botocore.stub import Stubber

    from byoctl import cli, sessions

    clients = sessions.on_boto_session(boto3.Session(region_name="us-east-1"))
    captured = {}
    clients.sagemaker.meta.events.register("provide-client-params.sagemaker.CreateTrainingJob",
                                           lambda params, **_: captured.update(params))
    with Stubber(clients.sagemaker) as stub:
        stub.add_response("create_training_job", {"TrainingJobArn": "arn:aws:sagemaker:us-east-1:1:training-job/x"})
        stub.add_response("describe_training_job", {
            "TrainingJobName": "mnist-1", "TrainingJobArn": "arn:aws:sagemaker:us-east-1:1:training-job/mnist-1",
            "TrainingJobStatus": "InProgress", "SecondaryStatus": "Starting", "CreationTime": 0,
            "ModelArtifacts": {"S3ModelArtifacts": ""}, "AlgorithmSpecification": {"TrainingInputMode": "File"},
            "StoppingCondition": {}})
        assert cli.main(["train", "--image", IMAGE, "--role", ROLE, "--channel", "training=s3://my-bucket/mnist/train",
                         "--channel", "test=s3://my-bucket/mnist/test", "--output-path", "s3://my-bucket/mnist/output",
                         "--hp", "epochs=8", "--hp", "model=cnn", "--instance-type", "ml.m5.xlarge", "--spot",
                         "--max-run", "3600", "--max-wait", "7200", "--checkpoint-s3-uri",
                         "s3://my-bucket/mnist/checkpoints", "--job-name", "mnist-1", "--no-wait"],
                        clients=clients) == 0
        stub.assert_no_pending_responses()
    return captured


def test_readme_model_trainer_asks_for_byoctls_training_job(offline, monkeypatch):
    readme, byoctl = model_trainer_request(monkeypatch), byoctl_request()
    assert readme.pop("TrainingJobName").startswith("mnist-")  # ModelTrainer's timestamped name
    assert byoctl.pop("TrainingJobName") == "mnist-1"
    # What ModelTrainer always adds, and byoctl's profiler setting (kept from SDK 2's Estimator).
    for channel in readme["InputDataConfig"]:
        assert channel.pop("InputMode") == "File"
    assert readme["OutputDataConfig"].pop("CompressionType") == "GZIP"
    assert readme["CheckpointConfig"].pop("LocalPath") == "/opt/ml/checkpoints"
    assert byoctl.pop("ProfilerConfig") == {"DisableProfiler": True}
    assert readme == byoctl


@pytest.fixture(autouse=True)
def _fresh_clients():
    """SDK 3 caches clients per boto3 session: a stub must not outlive its test."""
    yield
    from sagemaker.core.utils.utils import SageMakerClient

    SageMakerClient.reset()
