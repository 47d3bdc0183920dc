"""A batch transform that names no strategy, in SDK 2's local mode: the SDK asks the container
(GET /execution-parameters) and takes its `BatchStrategy` as the job's, accepting only the API's names
(`MultiRecord`, `SingleRecord`). tests/container/sdk3/test_sdk3_transform_strategy.py runs the same job under SDK 3.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from devkit.net import free_port
from devkit.script_models import AWS_ANSWER, AWS_INPUT, copy_aws_model
from tests.container.test_local_mode import ROLE, compose_containers, local_session, offline  # noqa: F401

pytestmark = [pytest.mark.container, pytest.mark.slow]
RECORDS = 30


def model_archive(folder: Path) -> Path:
    """AWS's own test model for its default handlers (no MXNet needed to make it) as model.tar.gz."""
    model_dir = copy_aws_model(folder / "model")
    archive = folder / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for file in model_dir.iterdir():
            tar.add(file, arcname=file.name)
    return archive


def csv_input(folder: Path) -> tuple[Path, list[float]]:
    """RECORDS lines of AWS's test input, and what the model answers to each."""
    folder.mkdir()
    (folder / "records.csv").write_text("".join(",".join(map(str, AWS_INPUT[0])) + "\n" for _ in range(RECORDS)))
    return folder / "records.csv", [float(AWS_ANSWER.strip(b"[]"))] * RECORDS


def predicted(output: Path) -> list[float]:
    return [float(line) for line in (output / "records.csv.out").read_text().split()]


def test_a_transform_without_a_strategy_takes_the_containers(offline, cpu_image, compose_containers,  # noqa: F811
                                                            tmp_path):
    from sagemaker.model import Model

    archive = model_archive(tmp_path)
    data, expected = csv_input(tmp_path / "input")
    model = Model(image_uri=cpu_image, model_data=f"file://{archive}", role=ROLE,
                  sagemaker_session=local_session(free_port()), name="local-mode-no-strategy-model")
    transformer = model.transformer(instance_count=1, instance_type="local", assemble_with="Line",
                                    output_path=f"file://{tmp_path / 'output'}", accept="text/csv")
    try:
        transformer.transform(f"file://{data}", content_type="text/csv", split_type="Line",
                              job_name="local-mode-no-strategy", wait=True, logs=False)
    finally:
        model.delete_model()
    assert transformer.sagemaker_session.sagemaker_client.describe_transform_job(
        TransformJobName="local-mode-no-strategy")["BatchStrategy"] == "MultiRecord"
    assert predicted(tmp_path / "output") == expected
