"""The SageMaker Python SDK major that byoctl drives (3.x by default, 2.x where that is installed).

Every byoctl command is the same SageMaker API calls on a session's clients under both majors; what
differs is where the session classes live and how a training job starts:

| | SDK 3.x | SDK 2.x |
| --- | --- | --- |
| session | `sagemaker.core.helper.session_helper.Session` | `sagemaker.Session` |
| local mode | `sagemaker.core.local.LocalSession` | `sagemaker.local.LocalSession` |
| training job | `sagemaker.core.resources.TrainingJob.create` | `sagemaker.estimator.Estimator.fit` |
| local training | `sagemaker.train.ModelTrainer`, `Mode.LOCAL_CONTAINER` | the Estimator, `instance_type="local"` |

Under SDK 3 a training job gets exactly the name asked for (ModelTrainer always appends a timestamp)
and the same CreateTrainingJob request as under SDK 2; the resource class then reads the job back
once (DescribeTrainingJob). Only a local job goes through ModelTrainer, SDK 3's one local trainer.
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any


def major() -> int:
    """The installed SDK's major version; byoctl supports 2 and 3."""
    try:
        version = metadata.version("sagemaker")
    except metadata.PackageNotFoundError:
        raise SystemExit("byoctl: the SageMaker Python SDK is not installed: pip install -e '.[sdk3]' "
                         "(or '.[sdk2]'), or `make client-venv`") from None
    found = int(version.split(".")[0])
    if found not in (2, 3):
        raise SystemExit(f"byoctl: sagemaker {version} is not supported: it drives SDK 2.x and 3.x")
    return found


def session(boto_session: Any, config: dict[str, Any]) -> Any:
    """A real SageMaker session on `boto_session`, with `config` as the SDK's defaults."""
    if major() == 2:
        import sagemaker

        return sagemaker.Session(boto_session=boto_session, sagemaker_config=config)
    from sagemaker.core.helper.session_helper import Session
    from sagemaker.core.utils.utils import SageMakerClient

    # The v3 resource classes take their clients from this per-session cache: sharing them means one
    # client for every call byoctl makes (and one to stub in tests).
    cached = SageMakerClient(session=boto_session)
    return Session(boto_session=boto_session, sagemaker_client=cached.sagemaker_client,
                   sagemaker_runtime_client=cached.sagemaker_runtime_client, sagemaker_config=config)


def local_session(boto_session: Any, config: dict[str, Any]) -> Any:
    if major() == 2:
        from sagemaker.local import LocalSession
    else:
        from sagemaker.core.local.local_session import LocalSession
    return LocalSession(boto_session=boto_session, sagemaker_config=config)


@dataclass
class TrainingJob:
    """A CreateTrainingJob request as byoctl builds it, before an SDK turns it into a call."""

    name: str
    image: str
    role: str
    channels: dict[str, str]
    output_path: str
    hyperparameters: dict[str, str]
    instance_type: str
    instance_count: int
    volume_size: int
    max_run: int
    spot: bool
    max_wait: int | None
    checkpoint_s3_uri: str | None
    environment: dict[str, str]
    metric_definitions: list[dict[str, str]]


def start_training(session: Any, job: TrainingJob) -> None:
    """Start a training job on SageMaker and return at once."""
    if major() == 2:
        _estimator(session, job).fit(inputs=job.channels, job_name=job.name, wait=False, logs="None")
        return
    from sagemaker.core import shapes
    from sagemaker.core.resources import TrainingJob as Resource

    optional: dict[str, Any] = {}
    if job.hyperparameters:
        optional["hyper_parameters"] = job.hyperparameters
    if job.environment:
        optional["environment"] = job.environment
    if job.spot:
        optional["enable_managed_spot_training"] = True
    if job.checkpoint_s3_uri:
        optional["checkpoint_config"] = shapes.CheckpointConfig(s3_uri=job.checkpoint_s3_uri)
    stopping = {"max_runtime_in_seconds": job.max_run}
    if job.max_wait:
        stopping["max_wait_time_in_seconds"] = job.max_wait
    Resource.create(
        training_job_name=job.name,
        role_arn=job.role,
        algorithm_specification=shapes.AlgorithmSpecification(
            training_image=job.image,
            training_input_mode="File",
            metric_definitions=[shapes.MetricDefinition(name=d["Name"], regex=d["Regex"])
                                for d in job.metric_definitions],
        ),
        input_data_config=[
            shapes.Channel(channel_name=name, data_source=shapes.DataSource(s3_data_source=shapes.S3DataSource(
                s3_data_type="S3Prefix", s3_uri=uri, s3_data_distribution_type="FullyReplicated")))
            for name, uri in job.channels.items()
        ],
        output_data_config=shapes.OutputDataConfig(s3_output_path=job.output_path),
        resource_config=shapes.ResourceConfig(instance_type=job.instance_type, instance_count=job.instance_count,
                                              volume_size_in_gb=job.volume_size),
        stopping_condition=shapes.StoppingCondition(**stopping),
        # As under SDK 2 (disable_profiler=True): a bring-your-own image has no smdebug.
        profiler_config=shapes.ProfilerConfig(disable_profiler=True),
        session=session.boto_session,
        **optional,
    )


def train_locally(session: Any, job: TrainingJob) -> dict[str, Any]:
    """Run the job in local mode to its end (the container's output goes to stdout); its description.

    SDK 2's local session keeps a record of the job; ModelTrainer keeps none, so under SDK 3 the
    description holds only the name and where model.tar.gz went.
    """
    if major() == 2:
        _estimator(session, job).fit(inputs=job.channels, job_name=job.name, wait=False, logs="None")
        if job.output_path.startswith("file://"):  # SDK 2 copies output.tar.gz there, failed or not
            raise_if_failed(Path(_local_path(job.output_path)) / "output.tar.gz")
        return session.sagemaker_client.describe_training_job(TrainingJobName=job.name)
    _model_trainer_local(session, job)
    return {"TrainingJobName": job.name,
            "ModelArtifacts": {"S3ModelArtifacts": f"{job.output_path.rstrip('/')}/model.tar.gz"}}


def _estimator(session: Any, job: TrainingJob) -> Any:
    from sagemaker.estimator import Estimator

    return Estimator(
        image_uri=job.image,
        role=job.role,
        instance_count=job.instance_count,
        instance_type=job.instance_type,
        volume_size=job.volume_size,
        max_run=job.max_run,
        output_path=job.output_path,
        hyperparameters=job.hyperparameters,
        metric_definitions=job.metric_definitions,
        use_spot_instances=job.spot,
        max_wait=job.max_wait,
        checkpoint_s3_uri=job.checkpoint_s3_uri,
        environment=job.environment or None,
        # A bring-your-own image has no smdebug: SageMaker Debugger and Profiler would only add rules
        # that cannot run.
        debugger_hook_config=False,
        disable_profiler=True,
        sagemaker_session=session,
    )


def _model_trainer_local(session: Any, job: TrainingJob) -> None:
    """ModelTrainer's local container mode, in a folder of its own; artifacts land at `output_path`.

    ModelTrainer names the job `name-TIMESTAMP` (the container's TRAINING_JOB_NAME), works in
    `local_container_root` and leaves model.tar.gz and output.tar.gz in its `compressed_artifacts/`;
    byoctl copies them to the output path, as SDK 2's local mode writes them there, and removes the
    folder and the job's exited containers.
    """
    from sagemaker.core.training.configs import Compute, InputData
    from sagemaker.train import ModelTrainer
    from sagemaker.train.model_trainer import Mode

    from byoctl.leftovers import remove_compose_containers

    output = Path(_local_path(job.output_path))
    root = Path(tempfile.mkdtemp(prefix="byoctl-train-"))
    try:
        trainer = ModelTrainer(
            training_image=job.image,
            training_mode=Mode.LOCAL_CONTAINER,
            compute=Compute(instance_type=job.instance_type, instance_count=job.instance_count),
            hyperparameters=job.hyperparameters or None,
            environment=job.environment or None,
            base_job_name=job.name,
            local_container_root=str(root),
            # The session's config carries the telemetry opt-out (the trainer would make a session of
            # its own without it).
            sagemaker_session=session,
            role=job.role,
        )
        trainer.train(input_data_config=[InputData(channel_name=name, data_source=_local_path(uri))
                                         for name, uri in job.channels.items()], wait=True)
        raise_if_failed(root / "compressed_artifacts" / "output.tar.gz")
        output.mkdir(parents=True, exist_ok=True)
        for artifact in ("model.tar.gz", "output.tar.gz"):
            shutil.copyfile(root / "compressed_artifacts" / artifact, output / artifact)
    finally:
        remove_compose_containers(root)
        shutil.rmtree(root, ignore_errors=True)


def raise_if_failed(output_tar: Path) -> None:
    """RuntimeError, as local mode raises for a failed container, when the job's output.tar.gz holds the
    container's `failure` file.

    Why: both SDKs learn a container's failure only from the exit code of `docker-compose up
    --abort-on-container-exit`, and docker-compose 1.x returns 0 when the container exits before compose
    has attached to it (a bad hyperparameter fails within a second): the job would pass as completed.
    """
    try:
        with tarfile.open(output_tar) as tar:
            member = next((m for m in tar.getmembers() if m.isfile() and m.name.removeprefix("./") == "failure"), None)
            reason = tar.extractfile(member).read().decode("utf-8", "replace").strip() if member else None
    except (OSError, tarfile.TarError):
        return  # no output to read: the SDK's own verdict stands
    if reason is not None:
        raise RuntimeError(f"the training container failed: {reason or '(an empty failure file)'}")


def _local_path(uri: str) -> str:
    """file:///a/b -> /a/b; s3:// URIs are left to the SDK (local mode downloads them)."""
    return uri[len("file://"):] if uri.startswith("file://") else uri
