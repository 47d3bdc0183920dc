"""byoctl's AWS calls, checked with botocore's Stubber on real boto3 clients: exact operations, exact parameters.

Under whichever SageMaker Python SDK is installed: `make test` runs this file in .venv (SDK 2) and in
.venv-client (SDK 3). The requests are the same under both; SDK 3's TrainingJob resource reads a job
back once after creating it (`created`).

Offline: dummy credentials, region us-east-1, no instance metadata, and a proxy that points nowhere,
so any call the stubs do not expect fails instead of reaching AWS.
"""

from __future__ import annotations

import datetime
import io
import json
from pathlib import Path

import numpy as np
import pytest

from devkit.offline import AWS_OFFLINE

ACCOUNT = "123456789012"
IMAGE = f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/mxnet-byoc:cpu"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/SageMakerRole"
NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
ARN = f"arn:aws:sagemaker:us-east-1:{ACCOUNT}"
METRIC_NAMES = ["epoch", "train_loss", "train_accuracy", "validation_loss", "validation_accuracy",
                "images_per_sec", "test_accuracy"]


IAM_PREFIX = {"api.sagemaker": "sagemaker", "runtime.sagemaker": "sagemaker", "logs": "logs"}


def policy_actions() -> set[str]:
    policy = json.loads((Path(__file__).resolve().parents[2] / "docs" / "iam-policy.json").read_text())
    actions: set[str] = set()
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        listed = statement["Action"]
        actions.update([listed] if isinstance(listed, str) else listed)
    return actions


@pytest.fixture(scope="module")
def clients():
    """Real boto3 clients inside byoctl's real session (built once: loading the service models is slow)."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in AWS_OFFLINE.items():
            mp.setenv(key, value)
        mp.delenv("AWS_PROFILE", raising=False)
        import boto3

        from byoctl import sessions

        yield sessions.on_boto_session(boto3.Session(region_name="us-east-1"))


@pytest.fixture
def aws(clients, monkeypatch):
    """Fresh stubs on the shared clients; a test fails if a stubbed response is left unused."""
    from botocore.stub import Stubber

    for key, value in AWS_OFFLINE.items():
        monkeypatch.setenv(key, value)
    stubs = {"sm": Stubber(clients.sagemaker), "runtime": Stubber(clients.runtime), "logs": Stubber(clients.logs)}
    for stub in stubs.values():
        stub.activate()
    called: list[str] = []

    def record(model, **_):
        called.append(f"{IAM_PREFIX[model.metadata['endpointPrefix']]}:{model.name}")

    for client in (clients.sagemaker, clients.runtime, clients.logs):
        client.meta.events.register("before-parameter-build.*.*", record, unique_id="byoctl-test-record")

    class AWS:
        sm_stub = stubs["sm"]
        runtime_stub = stubs["runtime"]
        logs_stub = stubs["logs"]

        def run(self, *argv: str) -> int:
            from byoctl import cli

            return cli.main(list(argv), clients=clients)

        def assert_done(self) -> None:
            for stub in stubs.values():
                stub.assert_no_pending_responses()

    yield AWS()
    for stub in stubs.values():
        stub.deactivate()
    for client in (clients.sagemaker, clients.runtime, clients.logs):
        client.meta.events.unregister("before-parameter-build.*.*", unique_id="byoctl-test-record")
    # Every call byoctl made is allowed by the minimal policy in docs/.
    missing = sorted(set(called) - policy_actions())
    assert not missing, f"docs/iam-policy.json lacks {missing}"


def training_job(name: str, status: str, secondary: str, **extra) -> dict:
    job = {
        "TrainingJobName": name,
        "TrainingJobArn": f"{ARN}:training-job/{name}",
        "ModelArtifacts": {"S3ModelArtifacts": f"s3://bucket/out/{name}/output/model.tar.gz"},
        "TrainingJobStatus": status,
        "SecondaryStatus": secondary,
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
        "CreationTime": NOW,
        "AlgorithmSpecification": {"TrainingImage": IMAGE, "TrainingInputMode": "File"},
    }
    job.update(extra)
    return job


def sdk_major() -> int:
    from byoctl import sdk

    return sdk.major()


def created(aws, name: str, expected: dict | None = None) -> None:
    """CreateTrainingJob answered; under SDK 3 also the DescribeTrainingJob its resource class makes next."""
    aws.sm_stub.add_response("create_training_job", {"TrainingJobArn": f"{ARN}:training-job/{name}"}, expected)
    if sdk_major() == 3:
        aws.sm_stub.add_response("describe_training_job", training_job(name, "InProgress", "Starting"),
                                 {"TrainingJobName": name})


def expected_metric_definitions() -> list[dict]:
    from mxnet_byoc.train import metrics

    definitions = metrics.metric_definitions()
    assert [d["Name"] for d in definitions] == METRIC_NAMES
    return definitions


# --- train --------------------------------------------------------------------------------------


def test_train_creates_the_training_job_with_exact_parameters(aws, capsys):
    created(aws, "mnist-1", {
        "TrainingJobName": "mnist-1",
        "AlgorithmSpecification": {
            "TrainingImage": IMAGE,
            "TrainingInputMode": "File",
            "MetricDefinitions": expected_metric_definitions(),
        },
        "RoleArn": ROLE,
        "HyperParameters": {"epochs": "3", "learning_rate": "0.003"},
        "InputDataConfig": [
            {"ChannelName": "training", "DataSource": {"S3DataSource": {
                "S3DataType": "S3Prefix", "S3Uri": "s3://bucket/mnist/train",
                "S3DataDistributionType": "FullyReplicated"}}},
            {"ChannelName": "test", "DataSource": {"S3DataSource": {
                "S3DataType": "S3Prefix", "S3Uri": "s3://bucket/mnist/test",
                "S3DataDistributionType": "FullyReplicated"}}},
        ],
        "OutputDataConfig": {"S3OutputPath": "s3://bucket/out"},
        "ResourceConfig": {"InstanceCount": 2, "InstanceType": "ml.c5.2xlarge", "VolumeSizeInGB": 30},
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
        "ProfilerConfig": {"DisableProfiler": True},
        "Environment": {"MXNET_BYOC_CONTEXTS": "cpu(0)"},
    })
    rc = aws.run("train", "--image", IMAGE, "--role", ROLE, "--channel", "training=s3://bucket/mnist/train",
                 "--channel", "test=s3://bucket/mnist/test", "--output-path", "s3://bucket/out",
                 "--hp", "epochs=3", "--hp", "learning_rate=0.003", "--instance-type", "ml.c5.2xlarge",
                 "--instance-count", "2", "--max-run", "3600", "--env", "MXNET_BYOC_CONTEXTS=cpu(0)",
                 "--job-name", "mnist-1", "--no-wait")
    assert rc == 0, capsys.readouterr().err
    aws.assert_done()
    assert "python -m byoctl status mnist-1" in capsys.readouterr().out


def test_spot_training_sets_max_wait_and_checkpoints(aws, capsys):
    created(aws, "spot-1", {
        "TrainingJobName": "spot-1",
        "AlgorithmSpecification": {"TrainingImage": IMAGE, "TrainingInputMode": "File",
                                   "MetricDefinitions": expected_metric_definitions()},
        "RoleArn": ROLE,
        "InputDataConfig": [{"ChannelName": "training", "DataSource": {"S3DataSource": {
            "S3DataType": "S3Prefix", "S3Uri": "s3://bucket/mnist/train",
            "S3DataDistributionType": "FullyReplicated"}}}],
        "OutputDataConfig": {"S3OutputPath": "s3://bucket/out"},
        "ResourceConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.xlarge", "VolumeSizeInGB": 30},
        "StoppingCondition": {"MaxRuntimeInSeconds": 1800, "MaxWaitTimeInSeconds": 7200},
        "EnableManagedSpotTraining": True,
        "CheckpointConfig": {"S3Uri": "s3://bucket/checkpoints/spot-1"},
        "ProfilerConfig": {"DisableProfiler": True},
    })
    rc = aws.run("train", "--image", IMAGE, "--role", ROLE, "--channel", "training=s3://bucket/mnist/train",
                 "--output-path", "s3://bucket/out", "--spot", "--max-run", "1800", "--max-wait", "7200",
                 "--checkpoint-s3-uri", "s3://bucket/checkpoints/spot-1", "--job-name", "spot-1", "--no-wait")
    assert rc == 0, capsys.readouterr().err
    aws.assert_done()


def test_spot_max_wait_below_max_run_is_refused(aws, capsys):
    rc = aws.run("train", "--image", IMAGE, "--role", ROLE, "--channel", "training=s3://b/t",
                 "--output-path", "s3://b/o", "--spot", "--max-run", "3600", "--max-wait", "600")
    assert rc == 1
    assert "--max-wait (600 s) must be at least --max-run (3600 s)" in capsys.readouterr().err
    aws.assert_done()


def test_train_follows_status_and_prints_metrics_from_the_logs(aws, capsys):
    created(aws, "j2")
    aws.sm_stub.add_response("describe_training_job", training_job("j2", "InProgress", "Starting"),
                             {"TrainingJobName": "j2"})
    aws.logs_stub.add_response("filter_log_events", {"events": []}, {
        "logGroupName": "/aws/sagemaker/TrainingJobs", "logStreamNamePrefix": "j2/", "startTime": 0})
    aws.sm_stub.add_response("describe_training_job", training_job("j2", "InProgress", "Training"),
                             {"TrainingJobName": "j2"})
    line1 = ("epoch=1; train_loss=0.210000; train_accuracy=0.935000; validation_loss=0.060000; "
             "validation_accuracy=0.981000; images_per_sec=12000; host=algo-1;")
    aws.logs_stub.add_response("filter_log_events", {
        "events": [{"eventId": "e1", "timestamp": 1000, "message": "loading data"},
                   {"eventId": "e2", "timestamp": 2000, "message": line1}],
        "nextToken": "page2",
    }, {"logGroupName": "/aws/sagemaker/TrainingJobs", "logStreamNamePrefix": "j2/", "startTime": 0})
    aws.logs_stub.add_response("filter_log_events", {
        "events": [{"eventId": "e3", "timestamp": 3000, "message": "test_accuracy=0.990100;"}],
    }, {"logGroupName": "/aws/sagemaker/TrainingJobs", "logStreamNamePrefix": "j2/", "startTime": 0,
        "nextToken": "page2"})
    aws.sm_stub.add_response("describe_training_job", training_job(
        "j2", "Completed", "Completed", BillableTimeInSeconds=321,
        FinalMetricDataList=[{"MetricName": "test_accuracy", "Value": 0.9901, "Timestamp": NOW}]),
        {"TrainingJobName": "j2"})
    # The last poll asks from the newest timestamp seen, and skips the event it already printed.
    aws.logs_stub.add_response("filter_log_events", {
        "events": [{"eventId": "e3", "timestamp": 3000, "message": "test_accuracy=0.990100;"}],
    }, {"logGroupName": "/aws/sagemaker/TrainingJobs", "logStreamNamePrefix": "j2/", "startTime": 3000})
    rc = aws.run("train", "--image", IMAGE, "--role", ROLE, "--channel", "training=s3://b/t",
                 "--output-path", "s3://b/out", "--job-name", "j2", "--poll", "0")
    out, err = capsys.readouterr()
    assert rc == 0, err
    aws.assert_done()
    assert "[j2] InProgress / Starting" in out
    assert "[j2] InProgress / Training" in out
    assert ("[j2] epoch=1  train_loss=0.2100  train_accuracy=0.9350  validation_loss=0.0600  "
            "validation_accuracy=0.9810  images_per_sec=12000") in out
    assert out.count("test_accuracy=0.9901") == 2  # as logged, then SageMaker's final metric
    assert "[j2] final metrics: test_accuracy=0.9901" in out
    assert "[j2] billable seconds: 321" in out
    assert "loading data" not in out  # only metric lines without --logs


def test_failed_training_job_reports_the_reason(aws, capsys):
    created(aws, "j3")
    aws.sm_stub.add_response("describe_training_job", training_job(
        "j3", "Failed", "Failed", FailureReason="AlgorithmError: no 'training' channel"))
    aws.logs_stub.add_client_error("filter_log_events", "ResourceNotFoundException",
                                   "The specified log group does not exist.")
    rc = aws.run("train", "--image", IMAGE, "--role", ROLE, "--channel", "test=s3://b/t",
                 "--output-path", "s3://b/out", "--job-name", "j3", "--poll", "0")
    assert rc == 1
    assert "training job j3 failed: AlgorithmError: no 'training' channel" in capsys.readouterr().err
    aws.assert_done()


# --- instance types whose GPUs the GPU image cannot run -----------------------------------------


def test_train_on_h100_instances_warns_then_creates_the_job(aws, capsys):
    created(aws, "p5-1")
    rc = aws.run("train", "--image", IMAGE, "--role", ROLE, "--channel", "training=s3://b/t",
                 "--output-path", "s3://b/out", "--instance-type", "ml.p5.48xlarge", "--job-name", "p5-1",
                 "--no-wait")
    out, err = capsys.readouterr()
    assert rc == 0, err
    aws.assert_done()
    warning = ("warning: ml.p5.48xlarge has NVIDIA H100 GPUs (compute capability 9.0), which the GPU image's "
               "MXNet build cannot run (SASS for sm_50, sm_60, sm_70, sm_80, sm_86 and no PTX)")
    assert warning in out
    assert "ml.p4d/p4de (A100), ml.g5 (A10G), ml.g6 (L4), ml.g6e (L40S)" in out
    assert out.index(warning) < out.index("training job p5-1: image")  # said before the job is created


def test_deploy_on_h200_instances_warns_before_creating_the_endpoint(aws, capsys):
    aws.sm_stub.add_response("create_model", {"ModelArn": f"{ARN}:model/mnist"})
    aws.sm_stub.add_response("create_endpoint_config", {"EndpointConfigArn": f"{ARN}:endpoint-config/mnist"})
    aws.sm_stub.add_response("create_endpoint", {"EndpointArn": f"{ARN}:endpoint/mnist"})
    rc = aws.run("deploy", "--model-data", "s3://b/model.tar.gz", "--image", IMAGE, "--role", ROLE,
                 "--endpoint-name", "mnist", "--instance-type", "ml.p5e.48xlarge", "--no-wait")
    out, err = capsys.readouterr()
    assert rc == 0, err
    aws.assert_done()
    warning = "warning: ml.p5e.48xlarge has NVIDIA H200 GPUs (compute capability 9.0)"
    assert warning in out
    assert out.index(warning) < out.index("model mnist: s3://b/model.tar.gz")


@pytest.mark.parametrize("instance_type", ["ml.g5.xlarge", "ml.g6e.2xlarge", "ml.p4d.24xlarge", "ml.c5.xlarge"])
def test_instance_types_the_image_runs_on_get_no_warning(aws, capsys, instance_type):
    created(aws, "ok-1")
    rc = aws.run("train", "--image", IMAGE, "--role", ROLE, "--channel", "training=s3://b/t",
                 "--output-path", "s3://b/out", "--instance-type", instance_type, "--job-name", "ok-1", "--no-wait")
    out, err = capsys.readouterr()
    assert rc == 0, err
    aws.assert_done()
    assert "warning" not in out


# --- deploy, invoke, delete ---------------------------------------------------------------------


def test_deploy_from_a_training_job(aws, capsys):
    aws.sm_stub.add_response("describe_training_job", training_job("j1", "Completed", "Completed"),
                             {"TrainingJobName": "j1"})
    aws.sm_stub.add_response("create_model", {"ModelArn": f"{ARN}:model/mnist"}, {
        "ModelName": "mnist",
        "PrimaryContainer": {"Image": IMAGE, "ModelDataUrl": "s3://bucket/out/j1/output/model.tar.gz",
                             "Environment": {"SAGEMAKER_MODEL_SERVER_WORKERS": "2"}},
        "ExecutionRoleArn": ROLE,
    })
    aws.sm_stub.add_response("create_endpoint_config", {"EndpointConfigArn": f"{ARN}:endpoint-config/mnist"}, {
        "EndpointConfigName": "mnist",
        "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": "mnist", "InitialInstanceCount": 1,
                                "InstanceType": "ml.c5.large", "InitialVariantWeight": 1.0}],
    })
    aws.sm_stub.add_response("create_endpoint", {"EndpointArn": f"{ARN}:endpoint/mnist"},
                             {"EndpointName": "mnist", "EndpointConfigName": "mnist"})
    for status in ("Creating", "InService"):
        aws.sm_stub.add_response("describe_endpoint", {
            "EndpointName": "mnist", "EndpointArn": f"{ARN}:endpoint/mnist", "EndpointStatus": status,
            "CreationTime": NOW, "LastModifiedTime": NOW}, {"EndpointName": "mnist"})
    rc = aws.run("deploy", "--training-job", "j1", "--role", ROLE, "--endpoint-name", "mnist",
                 "--instance-type", "ml.c5.large", "--env", "SAGEMAKER_MODEL_SERVER_WORKERS=2", "--poll", "0")
    out, err = capsys.readouterr()
    assert rc == 0, err
    aws.assert_done()
    assert "[mnist] endpoint Creating" in out and "[mnist] endpoint InService" in out


def test_deploy_refuses_an_unfinished_training_job(aws, capsys):
    aws.sm_stub.add_response("describe_training_job", training_job("j1", "InProgress", "Training"))
    rc = aws.run("deploy", "--training-job", "j1", "--role", ROLE, "--endpoint-name", "mnist")
    assert rc == 1
    assert "training job j1 is InProgress, not Completed" in capsys.readouterr().err
    aws.assert_done()


def _png_bytes() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("suffix,content_type,body", [
    (".png", "image/png", _png_bytes()),
    (".npy", "application/x-npy", None),
    (".json", "application/json", json.dumps({"instances": [[[0.0] * 28] * 28]}).encode()),
])
def test_invoke_sends_the_file_through_invoke_endpoint(aws, capsys, tmp_path, suffix, content_type, body):
    if body is None:
        buffer = io.BytesIO()
        np.save(buffer, np.zeros((2, 1, 28, 28), dtype=np.float32))
        body = buffer.getvalue()
    path = tmp_path / f"digit{suffix}"
    path.write_bytes(body)
    answer = {"predictions": [{"label": 7, "probabilities": [0.0] * 7 + [1.0, 0.0, 0.0]}]}
    aws.runtime_stub.add_response("invoke_endpoint", {"Body": io.BytesIO(json.dumps(answer).encode()),
                                                      "ContentType": "application/json"}, {
        "EndpointName": "mnist", "Body": body, "ContentType": content_type, "Accept": "application/json"})
    rc = aws.run("invoke", "mnist", str(path))
    out, err = capsys.readouterr()
    assert rc == 0, err
    aws.assert_done()
    assert json.loads(out) == answer


def test_invoke_reports_the_model_error(aws, capsys, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"nope": 1}')
    aws.runtime_stub.add_client_error(
        "invoke_endpoint", "ModelError",
        'Received client error (400) from primary with message "expected a JSON object {"instances": ...}"',
        http_status_code=424)
    rc = aws.run("invoke", "mnist", str(path))
    assert rc == 1
    assert "endpoint mnist refused the request: Received client error (400)" in capsys.readouterr().err
    aws.assert_done()


def test_invoke_unknown_extension_needs_a_content_type(aws, capsys, tmp_path):
    path = tmp_path / "digit.bmp"
    path.write_bytes(b"BM")
    assert aws.run("invoke", "mnist", str(path)) == 1
    assert "cannot tell the content type of digit.bmp" in capsys.readouterr().err
    aws.assert_done()


def test_delete_removes_endpoint_config_and_model(aws, capsys):
    aws.sm_stub.add_response("describe_endpoint", {
        "EndpointName": "mnist", "EndpointArn": f"{ARN}:endpoint/mnist", "EndpointConfigName": "mnist-config",
        "EndpointStatus": "InService", "CreationTime": NOW, "LastModifiedTime": NOW}, {"EndpointName": "mnist"})
    aws.sm_stub.add_response("describe_endpoint_config", {
        "EndpointConfigName": "mnist-config", "EndpointConfigArn": f"{ARN}:endpoint-config/mnist-config",
        "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": "mnist-model"}], "CreationTime": NOW},
        {"EndpointConfigName": "mnist-config"})
    aws.sm_stub.add_response("delete_endpoint", {}, {"EndpointName": "mnist"})
    aws.sm_stub.add_response("delete_endpoint_config", {}, {"EndpointConfigName": "mnist-config"})
    aws.sm_stub.add_response("delete_model", {}, {"ModelName": "mnist-model"})
    aws.sm_stub.add_response("delete_model", {}, {"ModelName": "old-transform-model"})
    rc = aws.run("delete", "mnist", "--model", "old-transform-model")
    out, err = capsys.readouterr()
    assert rc == 0, err
    aws.assert_done()
    assert out.splitlines() == ["deleted endpoint mnist", "deleted endpoint config mnist-config",
                                "deleted model mnist-model", "deleted model old-transform-model"]


def test_delete_of_a_missing_endpoint_says_so(aws, capsys):
    aws.sm_stub.add_client_error("describe_endpoint", "ValidationException",
                                 'Could not find endpoint "arn:aws:sagemaker:us-east-1:123456789012:endpoint/gone".')
    assert aws.run("delete", "gone") == 1
    assert "cannot look up endpoint gone: Could not find endpoint" in capsys.readouterr().err
    aws.assert_done()


# --- transform ----------------------------------------------------------------------------------


def test_transform_creates_model_and_job_then_deletes_the_model(aws, capsys):
    aws.sm_stub.add_response("create_model", {"ModelArn": f"{ARN}:model/t1"}, {
        "ModelName": "t1",
        "PrimaryContainer": {"Image": IMAGE, "ModelDataUrl": "s3://bucket/out/model.tar.gz", "Environment": {}},
        "ExecutionRoleArn": ROLE,
    })
    aws.sm_stub.add_response("create_transform_job", {"TransformJobArn": f"{ARN}:transform-job/t1"}, {
        "TransformJobName": "t1",
        "ModelName": "t1",
        "TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix",
                                                           "S3Uri": "s3://bucket/mnist/test.jsonl"}},
                           "ContentType": "application/jsonlines", "SplitType": "Line"},
        "TransformOutput": {"S3OutputPath": "s3://bucket/predictions", "Accept": "application/jsonlines",
                            "AssembleWith": "Line"},
        "TransformResources": {"InstanceType": "ml.c5.xlarge", "InstanceCount": 2},
        "BatchStrategy": "MultiRecord",
        "MaxPayloadInMB": 20,
    })
    transform_input = {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://x"}}}
    for status in ("InProgress", "Completed"):
        aws.sm_stub.add_response("describe_transform_job", {
            "TransformJobName": "t1", "TransformJobArn": f"{ARN}:transform-job/t1", "TransformJobStatus": status,
            "ModelName": "t1", "TransformInput": transform_input,
            "TransformResources": {"InstanceType": "ml.c5.xlarge", "InstanceCount": 2}, "CreationTime": NOW},
            {"TransformJobName": "t1"})
    aws.sm_stub.add_response("delete_model", {}, {"ModelName": "t1"})
    rc = aws.run("transform", "--model-data", "s3://bucket/out/model.tar.gz", "--image", IMAGE, "--role", ROLE,
                 "--input", "s3://bucket/mnist/test.jsonl", "--output-path", "s3://bucket/predictions",
                 "--content-type", "application/jsonlines", "--accept", "application/jsonlines",
                 "--instance-type", "ml.c5.xlarge", "--instance-count", "2", "--max-payload", "20",
                 "--job-name", "t1", "--poll", "0")
    out, err = capsys.readouterr()
    assert rc == 0, err
    aws.assert_done()
    assert "[t1] transform Completed" in out and "deleted model t1" in out


def test_failed_transform_still_deletes_its_model(aws, capsys):
    aws.sm_stub.add_response("create_model", {"ModelArn": f"{ARN}:model/t2"})
    aws.sm_stub.add_response("create_transform_job", {"TransformJobArn": f"{ARN}:transform-job/t2"})
    aws.sm_stub.add_response("describe_transform_job", {
        "TransformJobName": "t2", "TransformJobArn": f"{ARN}:transform-job/t2", "TransformJobStatus": "Failed",
        "FailureReason": "ClientError: 415 from the container", "ModelName": "t2",
        "TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://x"}}},
        "TransformResources": {"InstanceType": "ml.m5.large", "InstanceCount": 1}, "CreationTime": NOW})
    aws.sm_stub.add_response("delete_model", {}, {"ModelName": "t2"})
    rc = aws.run("transform", "--model-data", "s3://b/model.tar.gz", "--image", IMAGE, "--role", ROLE,
                 "--input", "s3://b/in", "--output-path", "s3://b/out", "--job-name", "t2", "--poll", "0")
    assert rc == 1
    assert "transform job t2 failed: ClientError: 415 from the container" in capsys.readouterr().err
    aws.assert_done()


# --- mistakes caught before any call ------------------------------------------------------------


@pytest.mark.parametrize("argv,message", [
    (["train", "--image", IMAGE, "--channel", "training=s3://b/t", "--output-path", "s3://b/o"],
     "no execution role"),
    (["train", "--image", IMAGE, "--role", "SageMakerRole", "--channel", "training=s3://b/t",
      "--output-path", "s3://b/o"], "--role must be a role ARN"),
    (["train", "--image", IMAGE, "--role", ROLE, "--channel", "training=file:///data", "--output-path", "s3://b/o"],
     "training 'file:///data' must start with s3:// (file:// works with --local)"),
    (["train", "--image", IMAGE, "--role", ROLE, "--channel", "training", "--output-path", "s3://b/o"],
     "--channel takes KEY=VALUE"),
    (["train", "--image", IMAGE, "--role", ROLE, "--channel", "training=s3://b/t", "--output-path", "s3://b/o",
      "--instance-type", "local"], "is for local mode: add --local"),
    (["deploy", "--role", ROLE, "--image", IMAGE], "no model: pass --model-data"),
    (["delete"], "name an endpoint, or pass --model NAME"),
])
def test_mistakes_are_refused_before_any_aws_call(aws, capsys, monkeypatch, argv, message):
    monkeypatch.delenv("SAGEMAKER_ROLE", raising=False)
    assert aws.run(*argv) == 1
    assert message in capsys.readouterr().err
    aws.assert_done()
