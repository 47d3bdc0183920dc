"""A batch transform that names no strategy, in SDK 3's local mode (sagemaker.core.local): the job takes the
container's `BatchStrategy` from GET /execution-parameters, as under SDK 2 (tests/container/
test_local_mode_strategy.py)."""

from __future__ import annotations

import pytest

from tests.container.test_local_mode_strategy import csv_input, model_archive, predicted

pytestmark = [pytest.mark.container, pytest.mark.slow]
ROLE = "arn:aws:iam::111111111111:role/local-mode"


def test_a_transform_without_a_strategy_takes_the_containers_under_sdk3(local_session, cpu_image, tmp_path):
    from byoctl.leftovers import local_leftovers_removed

    archive = model_archive(tmp_path)
    data, expected = csv_input(tmp_path / "input")
    client = local_session.sagemaker_client
    with local_leftovers_removed():
        client.create_model(ModelName="sdk3-no-strategy", ExecutionRoleArn=ROLE,
                            PrimaryContainer={"Image": cpu_image, "ModelDataUrl": f"file://{archive}",
                                              "Environment": {}})
        try:
            client.create_transform_job(
                TransformJobName="sdk3-no-strategy", ModelName="sdk3-no-strategy",
                TransformInput={"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": f"file://{data}"}},
                                "ContentType": "text/csv", "SplitType": "Line"},
                TransformOutput={"S3OutputPath": f"file://{tmp_path / 'output'}", "Accept": "text/csv",
                                 "AssembleWith": "Line"},
                TransformResources={"InstanceType": "local", "InstanceCount": 1})
        finally:
            client.delete_model(ModelName="sdk3-no-strategy")
    assert client.describe_transform_job(TransformJobName="sdk3-no-strategy")["BatchStrategy"] == "MultiRecord"
    assert predicted(tmp_path / "output") == expected
