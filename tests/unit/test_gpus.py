"""The GPU check: which compute capabilities a recorded build runs on, the reason it gives, the instance family
table, and how `train` (built-in and script mode) and `serve` stop on a GPU the build cannot run."""

from __future__ import annotations

import gzip
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mxnet_byoc import gpus

# What `mxnet-cu112==1.9.1`'s libmxnet.so carries (cuobjdump --list-elf / --list-ptx agree with fatbin.py).
MXNET_CU112 = {"sass": [50, 60, 70, 80, 86], "ptx": [], "fatbins": 198, "entries": 990}
H100 = gpus.Gpu(0, "NVIDIA H100 80GB HBM3", (9, 0))
A100 = gpus.Gpu(0, "NVIDIA A100-SXM4-40GB", (8, 0))


@pytest.mark.parametrize("sass,ptx,capability,runs", [
    ((80, 86), (), (8, 6), True),    # an sm_86 device runs sm_86 code ...
    ((80,), (), (8, 6), True),       # ... and sm_80 code (same major, lower minor)
    ((86,), (), (8, 9), True),       # L4 / L40S (8.9) run sm_86 code
    ((86,), (), (8, 0), False),      # but an A100 (8.0) cannot run code built for 8.6 only
    ((70,), (), (7, 5), True),       # T4 runs V100's code
    ((50, 60, 70, 80, 86), (), (9, 0), False),  # H100 / H200: no sm_9x and no PTX
    ((50, 60, 70, 80, 86), (), (10, 0), False),
    ((50, 60, 70, 80, 86), (), (3, 7), False),  # K80: older than every SASS in the build
    ((50, 60, 70, 80, 86), (86,), (9, 0), True),  # PTX for compute_86 JIT-compiles for any later device
    ((50, 60, 70, 80, 86), (86,), (12, 0), True),
    ((50,), (90,), (8, 9), False),   # PTX runs only on devices at least as new as it
    ((50,), (90,), (9, 0), True),
])
def test_a_build_runs_on_devices_by_sass_major_and_ptx_age(sass, ptx, capability, runs):
    assert gpus.Archs(sass, ptx).runs_on(capability) is runs


def test_the_pinned_build_runs_on_p3_to_g6e_and_not_on_p5():
    archs = gpus.Archs.from_record(MXNET_CU112)
    assert archs == gpus.PINNED_BUILD
    assert [f.name for f in gpus.working_families(archs)] == ["p3", "p3dn", "g4dn", "p4d", "p4de", "g5", "g6", "g6e"]
    assert archs.describe() == "SASS for sm_50, sm_60, sm_70, sm_80, sm_86 and no PTX"


def test_the_reason_names_the_gpu_the_build_the_families_and_the_override():
    reason = gpus.reason([H100, gpus.Gpu(1, H100.name, (9, 0))], gpus.PINNED_BUILD)
    assert reason.startswith("this GPU image's MXNet build cannot run on 2 x NVIDIA H100 80GB HBM3 (compute "
                             "capability 9.0): its libmxnet.so has SASS for sm_50, sm_60, sm_70, sm_80, sm_86 and "
                             "no PTX, so every GPU operator would fail with CUDA error 209")
    assert ("Instance families whose GPUs it runs: ml.p3/p3dn (V100), ml.g4dn (T4), ml.p4d/p4de (A100), "
            "ml.g5 (A10G), ml.g6 (L4), ml.g6e (L40S); not ml.p5 (H100), ml.p5e/p5en (H200).") in reason
    assert reason.endswith("Set MXNET_BYOC_ALLOW_UNSUPPORTED_GPU=1 to try anyway.")
    assert "\n" not in reason and len(reason) < 1000  # SageMaker shows the first 1024 characters


@pytest.mark.parametrize("instance_type,family", [
    ("ml.p5.48xlarge", "p5"), ("ml.p5e.48xlarge", "p5e"), ("ml.p5en.48xlarge", "p5en"),
    ("ml.p6-b200.48xlarge", "p6-b200"), ("ml.g6e.xlarge", "g6e"), ("ml.p3dn.24xlarge", "p3dn"),
    ("ml.m5.xlarge", None), ("local_gpu", None), ("local", None),
])
def test_family_of_an_instance_type(instance_type, family):
    found = gpus.family_of(instance_type)
    assert (found.name if found else None) == family


def test_every_gpu_family_sagemaker_accepts_is_in_the_table():
    """botocore's SageMaker model lists the instance types; a GPU family added there must be added here."""
    import botocore

    model = Path(botocore.__file__).parent / "data" / "sagemaker" / "2017-07-24" / "service-2.json.gz"
    shapes = json.loads(gzip.decompress(model.read_bytes()))["shapes"]
    types = {t for shape in ("TrainingInstanceType", "ProductionVariantInstanceType", "TransformInstanceType")
             for t in shapes[shape]["enum"]}
    gpu_families = {t.split(".")[1] for t in types if t.startswith(("ml.p", "ml.g"))}
    assert gpu_families <= {f.name for f in gpus.INSTANCE_FAMILIES}, gpu_families


def test_instance_warning_only_where_the_build_cannot_run():
    for instance_type in ("ml.p5.48xlarge", "ml.p5e.48xlarge", "ml.p5en.48xlarge", "ml.p6-b200.48xlarge",
                          "ml.p2.xlarge"):
        assert gpus.instance_warning(instance_type), instance_type
    for instance_type in ("ml.p3.2xlarge", "ml.g4dn.xlarge", "ml.p4d.24xlarge", "ml.g5.xlarge", "ml.g6.xlarge",
                          "ml.g6e.xlarge", "ml.m5.large", "local_gpu"):
        assert gpus.instance_warning(instance_type) is None, instance_type
    # A build with PTX (a future one) runs on H100: no warning.
    assert gpus.instance_warning("ml.p5.48xlarge", gpus.Archs((80, 86), (86,))) is None


# --- require_supported: the record, the probe, the override ---------------------------------------


@pytest.fixture
def record(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "cuda-archs.json"
    path.write_text(json.dumps(MXNET_CU112))
    monkeypatch.setattr(gpus, "RECORD", path)
    monkeypatch.delenv(gpus.ALLOW_VARIABLE, raising=False)
    return path


def visible(monkeypatch, found):
    monkeypatch.setattr(gpus, "probe", lambda timeout_s=gpus.PROBE_TIMEOUT_S: found)


def test_an_h100_is_refused(record, monkeypatch):
    visible(monkeypatch, [H100])
    with pytest.raises(gpus.UnsupportedGpu, match=r"cannot run on NVIDIA H100 80GB HBM3 \(compute capability 9.0\)"):
        gpus.require_supported()


def test_one_unsupported_gpu_among_supported_ones_is_refused(record, monkeypatch):
    visible(monkeypatch, [A100, gpus.Gpu(1, "NVIDIA H100 80GB HBM3", (9, 0))])
    with pytest.raises(gpus.UnsupportedGpu, match=r"cannot run on NVIDIA H100 80GB HBM3 \(compute"):
        gpus.require_supported()


def test_an_a100_passes_and_is_named_in_the_log(record, monkeypatch, capsys):
    visible(monkeypatch, [A100, gpus.Gpu(1, A100.name, (8, 0))])
    assert gpus.require_supported() == [A100, gpus.Gpu(1, A100.name, (8, 0))]  # serve runs a worker per GPU
    assert capsys.readouterr().err == (
        "GPU check: 2 GPU(s), each runs this image's MXNet build (SASS for sm_50, sm_60, sm_70, sm_80, sm_86 and "
        "no PTX): NVIDIA A100-SXM4-40GB (compute capability 8.0)\n")


@pytest.mark.parametrize("value", ["1", "true", "YES"])
def test_the_override_turns_the_refusal_into_a_warning(record, monkeypatch, capsys, value):
    visible(monkeypatch, [H100])
    monkeypatch.setenv(gpus.ALLOW_VARIABLE, value)
    gpus.require_supported()
    err = capsys.readouterr().err
    assert err.startswith("GPU check: MXNET_BYOC_ALLOW_UNSUPPORTED_GPU is set, so going on although this GPU "
                          "image's MXNet build cannot run on NVIDIA H100 80GB HBM3"), err


def test_no_gpu_or_no_driver_says_nothing(record, monkeypatch, capsys):
    for found in ([], None):
        visible(monkeypatch, found)
        assert gpus.require_supported() == []
    assert capsys.readouterr().err == ""


def test_without_a_record_the_driver_is_not_asked(tmp_path, monkeypatch, capsys):
    """The CPU image (no record) is never checked."""
    monkeypatch.setattr(gpus, "RECORD", tmp_path / "absent.json")
    monkeypatch.setattr(gpus, "probe", lambda **_: pytest.fail("probed"))
    gpus.require_supported()
    assert capsys.readouterr().err == ""


def test_a_driver_that_cannot_be_asked_skips_the_check_with_a_warning(record, monkeypatch, capsys):
    def failing(timeout_s=gpus.PROBE_TIMEOUT_S):
        raise gpus.ProbeError("the CUDA driver did not answer within 120 s")

    monkeypatch.setattr(gpus, "probe", failing)
    gpus.require_supported()
    assert capsys.readouterr().err == "GPU check: skipped: the CUDA driver did not answer within 120 s\n"


def test_a_broken_record_skips_the_check_with_a_warning(record, monkeypatch, capsys):
    record.write_text('{"sass": "sm_86"}')
    monkeypatch.setattr(gpus, "probe", lambda **_: pytest.fail("probed"))
    gpus.require_supported()
    assert capsys.readouterr().err.startswith(f"GPU check: skipped: the record {record} cannot be read: ")


def test_the_probe_runs_in_a_child_and_finds_no_driver_here():
    """This machine has no libcuda.so.1: the child says so and the check has nothing to compare."""
    assert subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout.count("libcuda.so.1") == 0
    assert gpus.probe() is None


def test_a_probe_that_hangs_or_fails_is_a_probe_error():
    with pytest.raises(gpus.ProbeError, match="did not answer within 0 s"):
        gpus.probe(timeout_s=0.2, command=[sys.executable, "-c", "import time; time.sleep(60)"])
    with pytest.raises(gpus.ProbeError, match="the driver probe exited with -11: Segmentation fault"):
        gpus.probe(command=[sys.executable, "-c", "import os, sys; print('Segmentation fault', file=sys.stderr); "
                                                  "os.kill(os.getpid(), 11)"])
    with pytest.raises(gpus.ProbeError, match="cuInit failed with CUDA error 999"):
        gpus.probe(command=[sys.executable, "-c",
                            "import json; print(json.dumps({'error': 'cuInit failed with CUDA error 999'}))"])


# --- the three entry points stop before any work ----------------------------------------------------


@pytest.fixture
def keep_signals():
    """`train` takes SIGTERM and SIGINT over; the test gives them back."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def test_train_writes_the_reason_to_output_failure_before_reading_its_config(record, monkeypatch, tmp_path,
                                                                             keep_signals):
    from mxnet_byoc.train import job

    visible(monkeypatch, [H100])
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(tmp_path / "ml"))  # no config, no data: never read
    assert job.main() == job.EXIT_FAILED
    failure = (tmp_path / "ml" / "output" / "failure").read_text()
    assert failure.startswith("this GPU image's MXNet build cannot run on NVIDIA H100 80GB HBM3"), failure


def test_script_mode_fails_the_same_way_before_fetching_the_code(record, monkeypatch, tmp_path, keep_signals):
    from mxnet_byoc.train.script import runner

    visible(monkeypatch, [H100])
    base = tmp_path / "ml"
    (base / "input" / "config").mkdir(parents=True)
    (base / "input" / "config" / "hyperparameters.json").write_text(json.dumps(
        {"sagemaker_program": "train.py", "sagemaker_submit_directory": "s3://bucket/never/fetched.tar.gz"}))
    assert runner.run(base) == runner.EXIT_FAILED
    failure = (base / "output" / "failure").read_text()
    assert failure.startswith("this GPU image's MXNet build cannot run on NVIDIA H100 80GB HBM3"), failure


def test_serve_exits_with_the_reason_before_gunicorn_starts(record, monkeypatch, capsys):
    from mxnet_byoc.serve import server

    visible(monkeypatch, [H100])
    monkeypatch.setattr(server.Application, "run", lambda self: pytest.fail("gunicorn started"))
    assert server.main() == 2
    assert capsys.readouterr().err.startswith("serve: this GPU image's MXNet build cannot run on NVIDIA H100")
