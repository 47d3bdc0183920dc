"""byoctl's pieces that need no AWS: metric lines as training prints them, payload files."""

from __future__ import annotations

import io

import pytest

from byoctl import payloads, progress
from mxnet_byoc.train import metrics


def test_metric_tee_passes_output_through_and_keeps_the_latest_metrics():
    out = io.StringIO()
    tee = progress.MetricTee(out, progress.MetricParser())
    line = metrics.format_line({"epoch": 2, "train_loss": 0.05, "train_accuracy": 0.98, "validation_loss": 0.04,
                                "validation_accuracy": 0.99, "images_per_sec": 5400.0}, host="algo-1")
    text = f"algo-1-abcde | progress: step 100\nalgo-1-abcde | {line}\nalgo-1-abcde | test_accuracy=0.991200;\n"
    # Local mode writes whatever readline() returned: lines may arrive in pieces.
    for chunk in (text[:30], text[30:77], text[77:]):
        tee.write(chunk)
    assert out.getvalue() == text
    assert tee.parser.latest == {"epoch": 2.0, "train_loss": 0.05, "train_accuracy": 0.98, "validation_loss": 0.04,
                                 "validation_accuracy": 0.99, "images_per_sec": 5400.0, "test_accuracy": 0.9912}


def test_print_final_prefers_sagemakers_final_metrics():
    out = io.StringIO()
    job = {"TrainingJobName": "j", "FinalMetricDataList": [{"MetricName": "test_accuracy", "Value": 0.99}],
           "ModelArtifacts": {"S3ModelArtifacts": "s3://b/j/output/model.tar.gz"}}
    progress.print_final(job, {"test_accuracy": 0.5}, out)
    assert out.getvalue() == ("[j] final metrics: test_accuracy=0.9900\n"
                              "[j] model artifacts: s3://b/j/output/model.tar.gz\n")


@pytest.mark.parametrize("name,content_type", [("a.PNG", "image/png"), ("a.jpeg", "image/jpeg"),
                                               ("a.npy", "application/x-npy"), ("a.jsonl", "application/jsonlines"),
                                               ("a.csv", "text/csv")])
def test_payload_content_type_from_the_extension(tmp_path, name, content_type):
    (tmp_path / name).write_bytes(b"x")
    assert payloads.read(tmp_path / name) == (b"x", content_type)
    assert payloads.read(tmp_path / name, "text/plain") == (b"x", "text/plain")


def test_payload_mistakes(tmp_path):
    with pytest.raises(payloads.PayloadError, match="is not a file"):
        payloads.read(tmp_path / "missing.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(payloads.PayloadError, match="is empty"):
        payloads.read(tmp_path / "empty.png")
    (tmp_path / "big.npy").write_bytes(b"0" * (payloads.MAX_REQUEST_BYTES + 1))
    with pytest.raises(payloads.PayloadError, match="use `byoctl transform`"):
        payloads.read(tmp_path / "big.npy")


def output_tar(path, files: dict[str, bytes]):
    """An output.tar.gz as local mode packs /opt/ml/output: one member per file, named as in the folder."""
    import tarfile

    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("name", ["failure", "./failure"])
def test_a_local_job_whose_output_holds_a_failure_file_raises_its_reason(tmp_path, name):
    from byoctl import sdk

    tar = output_tar(tmp_path / "output.tar.gz", {"data/x": b"1", name: b"hyperparameter 'epochs': not 0\n"})
    with pytest.raises(RuntimeError, match=r"^the training container failed: hyperparameter 'epochs': not 0$"):
        sdk.raise_if_failed(tar)


def test_a_local_job_without_a_failure_file_or_without_output_passes(tmp_path):
    from byoctl import sdk

    sdk.raise_if_failed(output_tar(tmp_path / "output.tar.gz", {"data/failure.txt": b"", "success": b""}))
    sdk.raise_if_failed(tmp_path / "missing.tar.gz")
    (tmp_path / "broken.tar.gz").write_bytes(b"not a tar")
    sdk.raise_if_failed(tmp_path / "broken.tar.gz")


def test_sdk2_local_training_fails_when_the_container_failed_but_fit_returned(tmp_path, monkeypatch):
    # SDK 2's local mode copies output.tar.gz to a file:// output path, failed or not; when docker-compose reports
    # exit 0 for a container that failed, fit returns and only the failure file tells.
    from byoctl import sdk

    class ReturnsAfterAFailure:
        def fit(self, **kwargs):
            (tmp_path / "out").mkdir()
            output_tar(tmp_path / "out" / "output.tar.gz", {"failure": b"no IDX files in the training channel"})

    class Session:
        class sagemaker_client:  # noqa: N801 - stands in for an attribute of the SDK's session
            @staticmethod
            def describe_training_job(TrainingJobName):  # noqa: N803 - boto3's keyword
                raise AssertionError("described a failed job as if it had completed")

    monkeypatch.setattr(sdk, "major", lambda: 2)
    monkeypatch.setattr(sdk, "_estimator", lambda session, job: ReturnsAfterAFailure())
    job = sdk.TrainingJob(name="bad", image="mxnet-byoc:cpu", role="arn:aws:iam::111122223333:role/local",
                          channels={"training": f"file://{tmp_path}"}, output_path=f"file://{tmp_path / 'out'}",
                          hyperparameters={}, instance_type="local", instance_count=1, volume_size=1, max_run=3600,
                          spot=False, max_wait=None, checkpoint_s3_uri=None, environment={}, metric_definitions=[])
    with pytest.raises(RuntimeError, match="^the training container failed: no IDX files in the training channel$"):
        sdk.train_locally(Session(), job)
