"""byoctl's guard on SDK 3's local training: a container that failed is a failed job even when ModelTrainer
returns normally (docker-compose 1.x exits 0 when the container stops before compose attaches to it)."""

from __future__ import annotations

import tarfile
import tempfile
from pathlib import Path

import pytest

from byoctl import sdk


class ReturnsAfterAFailure:
    """ModelTrainer in local container mode, as it behaves when compose misses the container's exit code: the
    artifacts packed (the failure file in output.tar.gz), no exception."""

    def __init__(self, **kwargs):
        self.root = Path(kwargs["local_container_root"])

    def train(self, input_data_config, wait):
        artifacts = self.root / "compressed_artifacts"
        artifacts.mkdir(parents=True)
        failure = self.root / "failure"
        failure.write_text("hyperparameter 'epochs': value '0' is not accepted; expected an integer in [1, 10000]")
        with tarfile.open(artifacts / "output.tar.gz", "w:gz") as tar:
            tar.add(failure, arcname="failure")
        with tarfile.open(artifacts / "model.tar.gz", "w:gz"):
            pass


def test_a_failed_container_fails_the_job_when_model_trainer_returns(local_session, monkeypatch, tmp_path):
    import sagemaker.train

    monkeypatch.setattr(sagemaker.train, "ModelTrainer", ReturnsAfterAFailure)
    folders = set(Path(tempfile.gettempdir()).glob("byoctl-train-*"))
    job = sdk.TrainingJob(name="bad-hp", image="mxnet-byoc:cpu", role="arn:aws:iam::111122223333:role/local",
                          channels={"training": f"file://{tmp_path}"}, output_path=f"file://{tmp_path / 'out'}",
                          hyperparameters={"epochs": "0"}, instance_type="local", instance_count=1, volume_size=1,
                          max_run=3600, spot=False, max_wait=None, checkpoint_s3_uri=None, environment={},
                          metric_definitions=[])
    with pytest.raises(RuntimeError, match=r"the training container failed: hyperparameter 'epochs'.*\[1, 10000\]"):
        sdk.train_locally(local_session, job)
    assert not (tmp_path / "out" / "model.tar.gz").exists()
    assert set(Path(tempfile.gettempdir()).glob("byoctl-train-*")) == folders
