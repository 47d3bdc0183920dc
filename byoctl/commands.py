"""What each byoctl subcommand does, against a real SageMaker session or SDK local mode alike.

Training starts through the installed SDK (byoctl/sdk.py: SDK 3's TrainingJob resource or ModelTrainer,
SDK 2's generic `Estimator(image_uri=...)`); models, endpoints, invocations and transforms are plain
SageMaker API calls on the session's clients, which local mode implements too. Names are given or
derived from one base name, so that `delete` can find what `deploy` made.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from byoctl import progress, sdk
from byoctl.sessions import LOCAL_INSTANCE_TYPES, Clients
from byoctl.shared import gpus, metric_definitions

VARIANT = "AllTraffic"


class CommandError(Exception):
    """A wrong or incomplete request; the message says what to change."""


def job_name(base: str) -> str:
    """`base-YYYYmmdd-HHMMSS`: unique enough per second, and within SageMaker's 63 characters."""
    return f"{base[:47]}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"


# --- train --------------------------------------------------------------------------------------


@dataclass
class TrainRequest:
    image: str
    channels: dict[str, str]
    output_path: str
    role: str | None = None
    hyperparameters: dict[str, str] = field(default_factory=dict)
    instance_type: str = "ml.m5.xlarge"
    instance_count: int = 1
    volume_size: int = 30
    max_run: int = 24 * 3600
    spot: bool = False
    max_wait: int | None = None
    checkpoint_s3_uri: str | None = None
    environment: dict[str, str] = field(default_factory=dict)
    job_name: str | None = None
    base_name: str = "mxnet-byoc"
    wait: bool = True
    echo_logs: bool = False
    poll_s: float = 15.0


def train(clients: Clients, req: TrainRequest, out: TextIO = sys.stdout) -> str:
    """Start the training job (and follow it unless `wait` is off); returns the job's name."""
    if not req.channels:
        raise CommandError("no input data: pass at least --channel training=URI")
    _check_uris(clients, {**req.channels, "output": req.output_path})
    max_wait = None
    if req.spot:
        if clients.local:
            raise CommandError("--spot needs a real SageMaker job; local mode has no spot instances")
        max_wait = req.max_wait or 2 * req.max_run
        if max_wait < req.max_run:
            raise CommandError(f"--max-wait ({max_wait} s) must be at least --max-run ({req.max_run} s)")
        if not req.checkpoint_s3_uri:
            print("warning: a spot job without --checkpoint-s3-uri restarts from epoch 1 after an "
                  "interruption", file=out)
    elif req.max_wait:
        raise CommandError("--max-wait applies to spot training only: add --spot")
    if req.checkpoint_s3_uri and clients.local:
        raise CommandError("--checkpoint-s3-uri needs a real SageMaker job (local mode does not sync checkpoints)")
    name = req.job_name or job_name(req.base_name)
    instance_type = _instance_type(clients, req.instance_type, out)
    job = sdk.TrainingJob(
        name=name, image=req.image, role=_role(clients, req.role), channels=req.channels,
        output_path=req.output_path, hyperparameters=req.hyperparameters, instance_type=instance_type,
        instance_count=req.instance_count, volume_size=req.volume_size, max_run=req.max_run, spot=req.spot,
        max_wait=max_wait, checkpoint_s3_uri=req.checkpoint_s3_uri, environment=req.environment,
        metric_definitions=metric_definitions())
    print(f"training job {name}: image {req.image}, {req.instance_count} x {instance_type}", file=out)
    if clients.local:
        # Local mode runs the job here, printing the container's output as it comes.
        parser = progress.MetricParser()
        saved, sys.stdout = sys.stdout, progress.MetricTee(sys.stdout, parser)
        try:
            described = sdk.train_locally(clients.session, job)
        finally:
            sys.stdout = saved
        progress.print_final(described, parser.latest, out)
        return name
    sdk.start_training(clients.session, job)
    if req.wait:
        progress.follow_training_job(clients.sagemaker, clients.logs, name, poll_s=req.poll_s, out=out,
                                     echo_logs=req.echo_logs)
    else:
        print(f"started; follow it with: python -m byoctl status {name}", file=out)
    return name


# --- models, endpoints --------------------------------------------------------------------------


@dataclass
class ModelSource:
    """Where a model comes from: its artifacts and image given, or a finished training job's."""

    model_data: str | None = None
    training_job: str | None = None
    image: str | None = None
    role: str | None = None
    environment: dict[str, str] = field(default_factory=dict)


def create_model(clients: Clients, name: str, source: ModelSource, out: TextIO = sys.stdout) -> None:
    model_data, image = source.model_data, source.image
    if source.training_job:
        if clients.local:
            raise CommandError("local mode keeps no record of earlier training jobs: pass --model-data "
                               "file://OUTPUT_PATH/model.tar.gz instead of --training-job")
        job = clients.sagemaker.describe_training_job(TrainingJobName=source.training_job)
        if job["TrainingJobStatus"] != "Completed":
            raise CommandError(f"training job {source.training_job} is {job['TrainingJobStatus']}, not Completed")
        model_data = model_data or job["ModelArtifacts"]["S3ModelArtifacts"]
        image = image or job["AlgorithmSpecification"]["TrainingImage"]
    if not model_data:
        raise CommandError("no model: pass --model-data URI (a model.tar.gz) or --training-job NAME")
    if not image:
        raise CommandError("no image: pass --image URI")
    _check_uris(clients, {"model data": model_data})
    clients.sagemaker.create_model(
        ModelName=name,
        PrimaryContainer={"Image": image, "ModelDataUrl": model_data, "Environment": source.environment},
        ExecutionRoleArn=_role(clients, source.role),
    )
    print(f"model {name}: {model_data} in {image}", file=out)


def deploy(
    clients: Clients,
    source: ModelSource,
    endpoint_name: str,
    instance_type: str = "ml.m5.large",
    instance_count: int = 1,
    wait: bool = True,
    poll_s: float = 30.0,
    out: TextIO = sys.stdout,
) -> None:
    """Model, endpoint config and endpoint, all named `endpoint_name`."""
    instance_type = _instance_type(clients, instance_type, out)
    if clients.local and instance_count != 1:
        raise CommandError("a local endpoint runs one container: drop --instance-count")
    create_model(clients, endpoint_name, source, out)
    clients.sagemaker.create_endpoint_config(
        EndpointConfigName=endpoint_name,
        ProductionVariants=[{
            "VariantName": VARIANT,
            "ModelName": endpoint_name,
            "InitialInstanceCount": instance_count,
            "InstanceType": instance_type,
            "InitialVariantWeight": 1.0,
        }],
    )
    print(f"endpoint config {endpoint_name}: {instance_count} x {instance_type}", file=out, flush=True)
    # In local mode this returns once the container answers /ping.
    clients.sagemaker.create_endpoint(EndpointName=endpoint_name, EndpointConfigName=endpoint_name)
    if wait:
        progress.wait_for_endpoint(clients.sagemaker, endpoint_name, poll_s=poll_s, out=out)
    else:
        print(f"endpoint {endpoint_name} is being created", file=out)


def invoke(
    clients: Clients,
    endpoint_name: str,
    body: bytes,
    content_type: str,
    accept: str = "application/json",
) -> bytes:
    """The endpoint's answer to one request; a clear error when the model server refuses it."""
    from botocore.exceptions import ClientError

    try:
        response = clients.runtime.invoke_endpoint(
            EndpointName=endpoint_name, Body=body, ContentType=content_type, Accept=accept)
    except ClientError as e:
        raise CommandError(f"endpoint {endpoint_name} refused the request: {e.response['Error']['Message']}") from e
    stream = response["Body"]
    data = stream.read()
    status = getattr(stream, "status", 200)  # local mode hands back the raw HTTP response
    if status >= 400:
        raise CommandError(f"endpoint {endpoint_name} answered HTTP {status}: {data.decode(errors='replace')}")
    return data


def endpoint_resources(clients: Clients, endpoint_name: str) -> tuple[str, list[str]]:
    """The endpoint config and models behind an endpoint, looked up before anything is deleted."""
    from botocore.exceptions import ClientError

    try:
        endpoint = clients.sagemaker.describe_endpoint(EndpointName=endpoint_name)
        config_name = endpoint["EndpointConfigName"]
        config = clients.sagemaker.describe_endpoint_config(EndpointConfigName=config_name)
    except ClientError as e:
        raise CommandError(f"cannot look up endpoint {endpoint_name}: {e.response['Error']['Message']}") from e
    return config_name, [variant["ModelName"] for variant in config["ProductionVariants"]]


def delete_endpoint(clients: Clients, endpoint_name: str, out: TextIO = sys.stdout) -> None:
    """The endpoint, its config and its models (what `deploy` created)."""
    config_name, models = endpoint_resources(clients, endpoint_name)
    clients.sagemaker.delete_endpoint(EndpointName=endpoint_name)
    print(f"deleted endpoint {endpoint_name}", file=out)
    clients.sagemaker.delete_endpoint_config(EndpointConfigName=config_name)
    print(f"deleted endpoint config {config_name}", file=out)
    for model in models:
        delete_model(clients, model, out)


def delete_model(clients: Clients, model_name: str, out: TextIO = sys.stdout) -> None:
    clients.sagemaker.delete_model(ModelName=model_name)
    print(f"deleted model {model_name}", file=out)


# --- batch transform ----------------------------------------------------------------------------


@dataclass
class TransformRequest:
    source: ModelSource
    input_uri: str
    output_path: str
    content_type: str = "text/csv"
    split_type: str = "Line"
    accept: str = "text/csv"
    assemble_with: str = "Line"
    instance_type: str = "ml.m5.large"
    instance_count: int = 1
    max_payload_mb: int = 6
    strategy: str = "MultiRecord"
    job_name: str | None = None
    base_name: str = "mxnet-byoc-transform"
    model_name: str | None = None  # an existing model; then none is created (or deleted)
    keep_model: bool = False
    wait: bool = True
    poll_s: float = 30.0


def transform(clients: Clients, req: TransformRequest, out: TextIO = sys.stdout) -> str:
    """A batch transform job; the model it creates for the job is deleted afterwards unless kept."""
    name = req.job_name or job_name(req.base_name)
    _check_uris(clients, {"input": req.input_uri, "output": req.output_path})
    model = req.model_name
    created = False
    if model is None:
        model = name
        create_model(clients, model, req.source, out)
        created = True
    try:
        params: dict[str, Any] = {
            "TransformJobName": name,
            "ModelName": model,
            "TransformInput": {
                "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": req.input_uri}},
                "ContentType": req.content_type,
                "SplitType": req.split_type,
            },
            "TransformOutput": {
                "S3OutputPath": req.output_path,
                "Accept": req.accept,
                "AssembleWith": req.assemble_with,
            },
            "TransformResources": {
                "InstanceType": _instance_type(clients, req.instance_type, out),
                "InstanceCount": req.instance_count,
            },
            "BatchStrategy": req.strategy,
            "MaxPayloadInMB": req.max_payload_mb,
        }
        print(f"transform job {name}: {req.input_uri} -> {req.output_path}", file=out, flush=True)
        # Local mode runs the whole job inside this call.
        clients.sagemaker.create_transform_job(**params)
        if req.wait or clients.local:
            progress.wait_for_transform(clients.sagemaker, name, poll_s=req.poll_s, out=out)
    finally:
        if created and not req.keep_model and (req.wait or clients.local):
            delete_model(clients, model, out)
    return name


# --- helpers ------------------------------------------------------------------------------------


def describe_training(clients: Clients, name: str, out: TextIO = sys.stdout) -> dict[str, Any]:
    job = clients.sagemaker.describe_training_job(TrainingJobName=name)
    print(f"[{name}] {job['TrainingJobStatus']} / {job.get('SecondaryStatus')}", file=out)
    progress.print_final(job, {}, out)
    return job


def _role(clients: Clients, role: str | None) -> str:
    if clients.local:
        from byoctl.sessions import LOCAL_ROLE

        return role or LOCAL_ROLE
    if not role:
        raise CommandError("no execution role: pass --role arn:aws:iam::ACCOUNT:role/NAME or set SAGEMAKER_ROLE")
    if not role.startswith("arn:"):
        raise CommandError(f"--role must be a role ARN (arn:aws:iam::ACCOUNT:role/NAME), not {role!r}")
    return role


def _instance_type(clients: Clients, instance_type: str, out: TextIO) -> str:
    if clients.local:
        return instance_type if instance_type in LOCAL_INSTANCE_TYPES else "local"
    if instance_type in LOCAL_INSTANCE_TYPES:
        raise CommandError(f"instance type {instance_type!r} is for local mode: add --local")
    warning = gpus.instance_warning(instance_type)
    if warning:  # a warning, not a refusal: the CPU image runs there, and a newer GPU image may
        print(f"warning: {warning}", file=out, flush=True)
    return instance_type


def _check_uris(clients: Clients, uris: dict[str, str]) -> None:
    schemes = ("s3://", "file://") if clients.local else ("s3://",)
    for what, uri in uris.items():
        if not uri.startswith(schemes):
            allowed = " or ".join(schemes)
            raise CommandError(f"{what} {uri!r} must start with {allowed}"
                               + ("" if clients.local else " (file:// works with --local)"))


def pretty(body: bytes) -> str:
    """JSON answers indented, anything else as text."""
    try:
        return json.dumps(json.loads(body), indent=2)
    except ValueError:
        return body.decode(errors="replace")
