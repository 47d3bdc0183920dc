"""`container/train` as SageMaker runs it: a real process against a temporary $SAGEMAKER_BASE_DIR.

Runs use subsets of the real MNIST (6000 training, 1000 test images) and mostly the mlp, so that the file stays
quick; the full-data accuracy targets are the benchmark's business (bench/train_bench.py).
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from devkit import idx, jobs, project
from devkit.idx import read_idx, write_idx
from devkit.jobs import make_job
from mxnet_byoc.train import metrics

pytestmark = pytest.mark.slow
N_TRAIN, N_TEST = 6000, 1000
# The mlp on the subsets: quick, and far above chance (about 0.90 after two epochs).
MLP = {"model": "mlp", "epochs": "2", "log_interval": "10"}
MLP_FLOOR = 0.85
CKPT = re.compile(r"^checkpoint-(?P<host>.+)-e(?P<epoch>\d{4})-s(?P<step>\d{7})\.(json|params)$")


# -- data and runs --------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def subsets(mnist_dir, tmp_path_factory) -> Path:
    """training/ (gzip, names unlike MNIST's) and test/ (uncompressed) channel folders, written once."""
    root = tmp_path_factory.mktemp("mnist-subsets")
    x, y = idx.mnist_arrays(mnist_dir, "training", N_TRAIN)
    tx, ty = idx.mnist_arrays(mnist_dir, "test", N_TEST)
    write_idx(root / "training" / "digits.idx.gz", x, gz=True)
    write_idx(root / "training" / "digit-classes.idx.gz", y, gz=True)
    write_idx(root / "test" / "images", tx)
    write_idx(root / "test" / "labels", ty)
    return root


class Run:
    def __init__(self, base: Path, returncode: int, output: str):
        self.base, self.returncode, self.output = base, returncode, output
        self.lines = output.splitlines()

    @property
    def failure(self) -> str:
        return (self.base / "output" / "failure").read_text()

    def json(self, relative: str):
        return json.loads((self.base / relative).read_text())

    def __repr__(self) -> str:  # shown by pytest when an assertion on a run fails
        return f"Run(rc={self.returncode}, output tail:\n{self.output[-3000:]})"


def job_env(base: Path, contexts: str | None = None) -> dict[str, str]:
    # SageMaker sets none of these: PYTHONUNBUFFERED in particular would hide a metric line left in a buffer.
    unset = ("MXNET_BYOC_CONTEXTS", "TRAINING_JOB_NAME", "PYTHONUNBUFFERED")
    env = {k: v for k, v in jobs.train_env(base).items() if k not in unset}
    if contexts:
        env["MXNET_BYOC_CONTEXTS"] = contexts
    return env


def train(base: Path, contexts: str | None = None, timeout: float = 300) -> Run:
    done = jobs.run_train(base, timeout, env=job_env(base, contexts))
    return Run(base, done.returncode, done.log)


def metric_lines(run: Run) -> list[str]:
    return [line for line in run.lines if re.match(r"^epoch=\d+;", line)]


def checkpoint_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if CKPT.match(p.name)) if directory.is_dir() else []


PLAIN_MXNET = r"""
import json, sys
import numpy as np
import mxnet as mx

model_dir, images_path, labels_path = sys.argv[1:4]
x = np.load(images_path).astype(np.float32)[:, None] / 255.0
y = np.load(labels_path).astype(np.int64)
prefix = model_dir + "/model"

net = mx.gluon.SymbolBlock.imports(prefix + "-symbol.json", ["data"], prefix + "-0000.params")
gluon_scores = net(mx.nd.array(x)).asnumpy()

sym, args, aux = mx.model.load_checkpoint(prefix, 0)
shape = json.load(open(model_dir + "/model-shapes.json"))[0]
mod = mx.mod.Module(sym, data_names=[shape["name"]], label_names=None, context=mx.cpu())
mod.bind(data_shapes=[(shape["name"], (len(x),) + tuple(shape["shape"][1:]))], for_training=False)
mod.set_params(args, aux)
mod.forward(mx.io.DataBatch([mx.nd.array(x)]), is_train=False)
module_scores = mod.get_outputs()[0].asnumpy()

ours = sorted(m for m in sys.modules if m.startswith("mxnet_byoc"))
print(json.dumps({"gluon_accuracy": float((gluon_scores.argmax(1) == y).mean()),
                  "module_accuracy": float((module_scores.argmax(1) == y).mean()),
                  "outputs": int(gluon_scores.shape[1]), "input_shape": shape["shape"], "ours": ours}))
"""


def load_with_plain_mxnet(model_dir: Path, images: Path, labels: Path) -> dict:
    """In a separate interpreter (-I: no PYTHONPATH, no cwd on sys.path) that never sees our package; the
    IDX files reach it as .npy arrays."""
    with tempfile.TemporaryDirectory() as arrays:
        np.save(f"{arrays}/x.npy", read_idx(images))
        np.save(f"{arrays}/y.npy", read_idx(labels))
        done = subprocess.run([str(project.python_bin() / "python"), "-I", "-c", PLAIN_MXNET, str(model_dir),
                               f"{arrays}/x.npy", f"{arrays}/y.npy"], capture_output=True, text=True, timeout=120,
                              cwd="/")
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- a successful run: artifacts, metrics, progress -----------------------------------------------------

@pytest.fixture(scope="module")
def mlp_run(subsets, tmp_path_factory) -> Run:
    run = train(make_job(tmp_path_factory.mktemp("mlp") / "ml", subsets, MLP))
    assert run.returncode == 0, run
    return run


def test_the_runtime_is_decided_once_and_logged(mlp_run):
    # One CPU host: the naive engine, which lets the training loop use host memory directly.
    assert re.search(r"runtime: devices every GPU, else the CPU \(detected\), engine NaiveEngine, OpenMP threads \d+$",
                     mlp_run.output, re.M), mlp_run


def test_success_writes_the_model_directory_and_outputs(mlp_run):
    model = mlp_run.base / "model"
    assert {"model-symbol.json", "model-0000.params", "model-shapes.json", "metadata.json"} <= {
        p.name for p in model.iterdir()}
    assert not (mlp_run.base / "output" / "failure").exists()
    assert mlp_run.json("model/model-shapes.json") == [{"name": "data", "shape": [1, 1, 28, 28]}]
    assert {"metrics.json", "confusion_matrix.json"} <= {p.name for p in (mlp_run.base / "output/data").iterdir()}


def test_metadata_records_classes_shape_preprocessing_hyperparameters_metrics_versions(mlp_run):
    meta = mlp_run.json("model/metadata.json")
    assert meta["classes"] == list(range(10))
    assert meta["input_shape"] == [1, 28, 28]
    assert meta["input_name"] == "data"
    assert "255" in meta["preprocessing"]["scale"] and meta["preprocessing"]["layout"] == "NCHW"
    hps = meta["hyperparameters"]
    assert (hps["model"], hps["epochs"], hps["log_interval"]) == ("mlp", 2, 10)
    assert hps["batch_size"] == 128  # defaults are recorded too
    assert (meta["training"]["global_batch"], meta["training"]["device_batch"]) == (128, 128)
    assert meta["metrics"] == mlp_run.json("output/data/metrics.json")
    assert meta["versions"]["mxnet"] == "1.9.1"
    assert meta["versions"]["numpy"] and meta["versions"]["python"] and meta["versions"]["mxnet_byoc"]
    assert meta["training"]["train_records"] == N_TRAIN and meta["training"]["validation_records"] == N_TEST


def test_final_metrics_and_confusion_matrix(mlp_run):
    final = mlp_run.json("output/data/metrics.json")
    assert final["validation_channel"] == "test"
    assert final["test_accuracy"] == final["validation_accuracy"] >= MLP_FLOOR
    assert final["epoch"] == 2
    confusion = mlp_run.json("output/data/confusion_matrix.json")
    matrix = np.array(confusion["matrix"])
    assert confusion["classes"] == list(range(10)) and matrix.shape == (10, 10)
    assert matrix.sum() == N_TEST
    assert np.trace(matrix) / N_TEST == pytest.approx(final["test_accuracy"], abs=1e-9)
    labels = _read_test_labels(mlp_run)
    assert matrix.sum(axis=1).tolist() == np.bincount(labels, minlength=10).tolist()  # rows: true labels


def _read_test_labels(run: Run) -> np.ndarray:
    return read_idx(run.base / "input/data/test/labels")


def test_artifacts_load_with_plain_mxnet_and_reproduce_the_accuracy(mlp_run):
    test = mlp_run.base / "input" / "data" / "test"
    loaded = load_with_plain_mxnet(mlp_run.base / "model", test / "images", test / "labels")
    assert loaded["ours"] == []
    assert loaded["outputs"] == 10 and loaded["input_shape"] == [1, 1, 28, 28]
    reported = mlp_run.json("output/data/metrics.json")["test_accuracy"]
    assert loaded["gluon_accuracy"] == pytest.approx(reported, abs=0.002)
    assert loaded["module_accuracy"] == pytest.approx(reported, abs=0.002)


def test_metric_definitions_read_the_real_log(mlp_run):
    history = mlp_run.json("model/metadata.json")["history"]
    final = mlp_run.json("output/data/metrics.json")
    assert len(metric_lines(mlp_run)) == 2
    definitions = metrics.metric_definitions()
    names = {d["Name"] for d in definitions}
    assert {"train_loss", "train_accuracy", "validation_loss", "validation_accuracy", "test_accuracy"} <= names
    for definition in definitions:
        # SageMaker applies each regex to every log line and keeps the first group of each match.
        pattern = re.compile(definition["Regex"])
        found = [float(m.group(1)) for line in mlp_run.lines if (m := pattern.search(line))]
        name = definition["Name"]
        if name == "test_accuracy":
            expected = [final["test_accuracy"]]
        else:
            expected = [float(h[name]) for h in history]
        tolerance = 0.51 if name == "images_per_sec" else 1e-6
        assert found == pytest.approx(expected, abs=tolerance), (name, found, expected)


def test_metric_lines_come_once_per_epoch_with_progress_lines_inside_each_epoch(mlp_run):
    lines = mlp_run.lines
    epoch_at = [i for i, line in enumerate(lines) if re.match(r"^epoch=\d+;", line)]
    progress_at = [i for i, line in enumerate(lines) if line.startswith("progress:")]
    assert len(epoch_at) == 2
    # 6000 images at batch 128 make 46 steps; log_interval=10 gives 4 progress lines per epoch.
    assert len(progress_at) == 8
    assert all(i < epoch_at[0] for i in progress_at[:4])
    assert all(epoch_at[0] < i < epoch_at[1] for i in progress_at[4:])
    assert re.match(r"^progress: epoch 1/2 step 10/46 loss \d+\.\d+ accuracy 0\.\d+", lines[progress_at[0]])


def test_checkpoints_every_epoch_with_host_unique_names(mlp_run):
    names = checkpoint_files(mlp_run.base / "checkpoints")
    assert names == [
        "checkpoint-algo-1-e0001-s0000000.json", "checkpoint-algo-1-e0001-s0000000.params",
        "checkpoint-algo-1-e0002-s0000000.json", "checkpoint-algo-1-e0002-s0000000.params",
    ]


# -- data of another kind -------------------------------------------------------------------------------

def test_another_image_size_and_class_count_trains_with_no_code_change(subsets, mnist_dir, tmp_path):
    """MNIST's digits 0-4 cropped to 20x20: the input shape and the five classes come from the data."""
    cropped = tmp_path / "cropped"
    for channel, images, labels in (("training", "digits.idx.gz", "digit-classes.idx.gz"),
                                    ("test", "images", "labels")):
        x = read_idx(subsets / channel / images)
        y = read_idx(subsets / channel / labels)
        keep = y < 5
        write_idx(cropped / channel / "x", np.ascontiguousarray(x[keep][:, 4:24, 4:24]))
        write_idx(cropped / channel / "y", y[keep])
    base = make_job(tmp_path / "ml", cropped, {"model": "cnn", "epochs": "1"})
    run = train(base)
    assert run.returncode == 0, run
    meta = run.json("model/metadata.json")
    assert meta["input_shape"] == [1, 20, 20] and meta["classes"] == [0, 1, 2, 3, 4]
    assert run.json("model/model-shapes.json") == [{"name": "data", "shape": [1, 1, 20, 20]}]
    accuracy = run.json("output/data/metrics.json")["test_accuracy"]
    assert accuracy > 0.9
    test = base / "input" / "data" / "test"
    loaded = load_with_plain_mxnet(base / "model", test / "x", test / "y")
    assert loaded["outputs"] == 5 and loaded["input_shape"] == [1, 1, 20, 20]
    assert loaded["module_accuracy"] == pytest.approx(accuracy, abs=0.002)


# -- without a test channel; checkpointconfig.json; host names ------------------------------------------

@pytest.fixture(scope="module")
def split_run(subsets, tmp_path_factory) -> Run:
    root = tmp_path_factory.mktemp("split")
    config = {"checkpointconfig.json": {"LocalPath": str(root / "spot-checkpoints"), "S3Uri": "s3://b/c"},
              "resourceconfig.json": {"current_host": "algo-3", "hosts": ["algo-3"],
                                      "network_interface_name": "eth0"}}
    run = train(make_job(root / "ml", subsets, {**MLP, "epochs": "1", "validation_fraction": "0.2"},
                         channels=("training",), config=config))
    assert run.returncode == 0, run
    return run


def test_without_a_test_channel_the_validation_split_is_used(split_run):
    final = split_run.json("output/data/metrics.json")
    assert final["validation_channel"] == "20% of training"
    assert "test_accuracy" not in final
    assert final["validation_accuracy"] > 0.8
    meta = split_run.json("model/metadata.json")
    assert meta["training"]["validation_records"] == 1200 and meta["training"]["train_records"] == 4800
    assert np.array(split_run.json("output/data/confusion_matrix.json")["matrix"]).sum() == 1200
    assert not any(line.startswith("test_accuracy=") for line in split_run.lines)


def test_checkpointconfig_local_path_is_used(split_run):
    local = split_run.base.parent / "spot-checkpoints"
    assert checkpoint_files(local), split_run
    assert checkpoint_files(split_run.base / "checkpoints") == []


def test_checkpoint_names_carry_the_current_host(split_run):
    names = checkpoint_files(split_run.base.parent / "spot-checkpoints")
    assert names and all(CKPT.match(n).group("host") == "algo-3" for n in names)


# -- devices --------------------------------------------------------------------------------------------

def test_two_devices_reach_the_accuracy_of_one(mlp_run, subsets, tmp_path):
    run = train(make_job(tmp_path / "ml", subsets, MLP), contexts="cpu(0),cpu(1)")
    assert run.returncode == 0, run
    assert "runtime: devices cpu(0),cpu(1) (MXNET_BYOC_CONTEXTS), engine NaiveEngine" in run.output, run
    assert run.json("model/metadata.json")["training"]["devices"] == ["cpu(0)", "cpu(1)"]
    two = run.json("output/data/metrics.json")
    one = mlp_run.json("output/data/metrics.json")
    assert mlp_run.json("model/metadata.json")["training"]["devices"] == ["cpu(0)"]
    # Same seed, same global batch: the same updates up to rounding.
    assert two["test_accuracy"] == pytest.approx(one["test_accuracy"], abs=0.005)
    history_two = run.json("model/metadata.json")["history"]
    history_one = mlp_run.json("model/metadata.json")["history"]
    for a, b in zip(history_two, history_one):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=0.01)


# -- resuming -------------------------------------------------------------------------------------------

def _copy_job(run: Run, dest: Path, **changes) -> Path:
    """The finished job's tree (data, config, checkpoints) without its outputs, with hyperparameters changed."""
    shutil.copytree(run.base, dest, ignore=shutil.ignore_patterns("model", "output"))
    path = dest / "input" / "config" / "hyperparameters.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return dest


def test_a_restarted_job_resumes_from_the_newest_checkpoint(mlp_run, tmp_path):
    run = train(_copy_job(mlp_run, tmp_path / "ml", epochs="3"))
    assert run.returncode == 0, run
    assert any(re.search(r"resumed from epoch 2\b", line) for line in run.lines), run
    assert [line.split(";")[0] for line in metric_lines(run)] == ["epoch=3"]
    assert [h["epoch"] for h in run.json("model/metadata.json")["history"]] == [1, 2, 3]
    assert "checkpoint-algo-1-e0003-s0000000.json" in checkpoint_files(run.base / "checkpoints")


def test_a_corrupt_newest_checkpoint_is_skipped_with_a_warning(mlp_run, tmp_path):
    base = _copy_job(mlp_run, tmp_path / "ml", epochs="3")
    newest = base / "checkpoints" / "checkpoint-algo-1-e0002-s0000000.params"
    newest.write_bytes(newest.read_bytes()[:1000])
    run = train(base)
    assert run.returncode == 0, run
    warnings = [line for line in run.lines if "WARNING" in line and "checkpoint-algo-1-e0002" in line]
    assert warnings and "corrupt" in warnings[0], run
    assert any(re.search(r"resumed from epoch 1\b", line) for line in run.lines), run
    assert [line.split(";")[0] for line in metric_lines(run)] == ["epoch=2", "epoch=3"]
    assert run.json("output/data/metrics.json")["test_accuracy"] >= MLP_FLOOR


# -- SIGTERM --------------------------------------------------------------------------------------------

def stop_with_sigterm(base: Path, at: str) -> tuple[Run, list[str]]:
    """`train` on `base`, sent SIGTERM as soon as it prints a line starting with `at`; the run and the lines
    it printed up to that one."""
    proc = jobs.start_train(base, env=job_env(base))
    before = []
    try:
        for line in proc.stdout:
            before.append(line)
            if line.startswith(at):
                proc.send_signal(signal.SIGTERM)
                break
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return Run(base, proc.returncode, "".join(before) + rest), before


def test_sigterm_stops_with_a_checkpoint_and_a_rerun_resumes_to_normal_accuracy(mlp_run, subsets, tmp_path):
    # The same job as mlp_run, with a progress line every step so that the signal lands mid-epoch.
    base = make_job(tmp_path / "ml", subsets, {**MLP, "log_interval": "1"})
    stopped, before = stop_with_sigterm(base, at="progress:")
    assert before and before[-1].startswith("progress: epoch 1/2 step "), stopped
    assert stopped.returncode == 143, stopped
    first = stopped.failure.splitlines()[0]
    assert "stopped" in first.lower() and "SIGTERM" in first, first
    # At the next step: within the epoch the signal came in (46 steps of a few ms each), so the line
    # must have reached the pipe as it was printed, not when a buffer filled up.
    assert "at epoch 1 step" in first, first
    assert "SIGTERM received" in stopped.output and "Logging error" not in stopped.output, stopped
    assert not metric_lines(stopped)
    assert not (base / "model" / "model-symbol.json").exists()
    names = checkpoint_files(base / "checkpoints")
    assert any(re.match(r"checkpoint-algo-1-e0000-s000\d{4}\.json$", n) for n in names), (names, stopped)
    assert any(n.endswith(".params") for n in names), names

    (base / "output" / "failure").unlink()  # SageMaker starts a restarted job with fresh outputs
    resumed = train(base)
    assert resumed.returncode == 0, resumed
    assert any(re.match(r"resumed from epoch 0 step [1-9]\d*$", line) for line in resumed.lines), resumed
    assert [line.split(";")[0] for line in metric_lines(resumed)] == ["epoch=1", "epoch=2"]
    assert not (base / "output" / "failure").exists()
    accuracy = resumed.json("output/data/metrics.json")["test_accuracy"]
    assert accuracy >= MLP_FLOOR
    # The same job uninterrupted: resuming mid-epoch replays the same updates.
    assert accuracy == pytest.approx(mlp_run.json("output/data/metrics.json")["test_accuracy"], abs=0.005)


def test_a_fresh_start_over_unusable_checkpoints_keeps_its_own_and_resumes_from_them(mlp_run, subsets, tmp_path):
    """A user reruns with another batch size and the same checkpoint folder, which also holds files torn by an
    earlier crash. Their names sort above everything this run writes: they must not push its checkpoints out."""
    base = make_job(tmp_path / "ml", subsets, {**MLP, "batch_size": "64", "log_interval": "1"})
    folder = base / "checkpoints"
    shutil.copytree(mlp_run.base / "checkpoints", folder)  # batch 128: made with other settings
    earlier = checkpoint_files(folder)
    # A damaged .params under a .json that matches this job's settings, and a half-written .json.
    matching = {**json.loads((folder / earlier[0]).read_text()), "batch_size": 64, "steps_per_epoch": 93}
    torn = {"checkpoint-algo-1-e0008-s0000000.json": json.dumps(matching).encode(),
            "checkpoint-algo-1-e0008-s0000000.params": (folder / earlier[1]).read_bytes()[:500],
            "checkpoint-algo-1-e0009-s0000000.json": b'{"epoch": 9, "step": 0, "upd',
            "checkpoint-algo-1-e0009-s0000000.params": (folder / earlier[1]).read_bytes()}
    for name, content in torn.items():
        (folder / name).write_bytes(content)

    # Stopped in epoch 2: 6000 images at batch 64 make 93 steps an epoch.
    stopped, before = stop_with_sigterm(base, at="progress: epoch 2/2 step ")
    assert stopped.returncode == 143, stopped
    assert "at epoch 2 step" in stopped.failure.splitlines()[0], stopped
    set_aside = [line for line in stopped.lines if "WARNING" in line and "set aside" in line]
    assert any("e0009" in line and "corrupt" in line for line in set_aside), stopped
    assert any("e0008" in line and "corrupt" in line for line in set_aside), stopped
    assert any("e0002" in line and "other settings: " in line and "batch_size 128 (this job: 64)" in line
               for line in set_aside), stopped
    assert all("which SageMaker uploads to S3" in line for line in set_aside), set_aside
    own = checkpoint_files(folder)
    assert own[:2] == ["checkpoint-algo-1-e0001-s0000000.json", "checkpoint-algo-1-e0001-s0000000.params"], own
    assert len(own) == 4 and re.match(r"checkpoint-algo-1-e0001-s00000\d\d\.json$", own[2]), own
    # Nothing of the earlier runs was deleted: it waits in set-aside/, which SageMaker uploads too.
    assert sorted(p.name for p in (folder / "set-aside").iterdir()) == sorted([*earlier, *torn])

    (base / "output" / "failure").unlink()
    resumed = train(base)
    assert resumed.returncode == 0, resumed
    assert any(re.fullmatch(r"resumed from epoch 1 step [1-9]\d*", line) for line in resumed.lines), resumed
    assert [line.split(";")[0] for line in metric_lines(resumed)] == ["epoch=2"]
    assert not any("set aside" in line for line in resumed.lines), resumed
    assert resumed.json("output/data/metrics.json")["test_accuracy"] >= MLP_FLOOR


# -- failures -------------------------------------------------------------------------------------------

def _bad_magic(base: Path) -> None:
    path = base / "input/data/training/digits.idx.gz"
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[:4] = b"GIF8"
    path.write_bytes(gzip.compress(bytes(raw), compresslevel=1))


def _truncated_idx(base: Path) -> None:
    path = base / "input/data/test/images"
    path.write_bytes(path.read_bytes()[:-784 * 3])


def _truncated_gzip(base: Path) -> None:
    path = base / "input/data/training/digit-classes.idx.gz"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 20])


def _counts_differ(base: Path) -> None:
    path = base / "input/data/training/digit-classes.idx.gz"
    write_idx(path, read_idx(path)[:-1], gz=True)


def _no_training_channel(base: Path) -> None:
    shutil.rmtree(base / "input/data/training")


def _empty_channel(base: Path) -> None:
    for path in (base / "input/data/training").iterdir():
        path.unlink()


def _hyperparameters(values: dict):
    def change(base: Path) -> None:
        (base / "input/config/hyperparameters.json").write_text(json.dumps(values))
    return change


def _model_dir_is_a_file(base: Path) -> None:
    # Root ignores permissions, so make the model directory impossible: a regular file in its place.
    (base / "model").write_text("not a directory")


def _output_data_dir_is_a_file(base: Path) -> None:
    (base / "output").mkdir()
    (base / "output" / "data").write_text("not a directory")


FAILURES = {
    "no-training-channel": (_no_training_channel, None, r"no 'training' channel.*input/data/training"),
    "empty-channel": (_empty_channel, None, r"channel 'training' is empty"),
    "bad-magic": (_bad_magic, None, r"digits\.idx\.gz: not an IDX file \(bad magic number 47494638"),
    "truncated-idx": (_truncated_idx, None, r"images: IDX data has \d+ bytes but its header \(1000, 28, 28\)"),
    "truncated-gzip": (_truncated_gzip, None, r"digit-classes\.idx\.gz: gzip data is corrupt or truncated"),
    "counts-differ": (_counts_differ, None, r"digits\.idx\.gz holds 6000 images but no label file .*5999"),
    "unknown-hyperparameter": (_hyperparameters({"epochz": "2"}), None,
                               r"unknown hyperparameter 'epochz' \(value '2'\); known: .*epochs"),
    "wrong-type-hyperparameter": (_hyperparameters({"batch_size": "\"big\""}), None,
                                  r"hyperparameter 'batch_size': value '\"big\"' is not accepted; expected an integer"),
    "bad-contexts": (lambda base: None, "tpu(0)", r"MXNET_BYOC_CONTEXTS: cannot read device 'tpu\(0\)'"),
    "model-dir-unwritable": (_model_dir_is_a_file, None, r"the model directory .*/model cannot be written"),
    "output-dir-unwritable": (_output_data_dir_is_a_file, None,
                              r"the output data directory .*/output/data cannot be written"),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_failures_write_a_reason_and_exit_non_zero(case, subsets, tmp_path):
    change, contexts, reason = FAILURES[case]
    base = make_job(tmp_path / "ml", subsets, {**MLP, "epochs": "1"})
    change(base)
    run = train(base, contexts=contexts)
    assert run.returncode == 1, run
    failure = run.failure
    first = failure.splitlines()[0]
    assert re.search(reason, first), (first, run)
    assert len(first) <= 1023 and not first.startswith("Traceback")
    assert "Traceback (most recent call last)" in failure  # the traceback goes below the reason
    assert f"ERROR: {first}" in run.output  # and the reason reaches the log
    assert "Logging error" not in run.output
    assert not metric_lines(run)  # it failed before training, not after
    assert not (base / "model" / "model-0000.params").exists()


def test_the_executable_is_runnable_as_sagemaker_calls_it():
    # SageMaker runs `train` from PATH: it must be executable, with a shebang and no CRLF line ends.
    raw = project.TRAIN.read_bytes()
    assert os.access(project.TRAIN, os.X_OK)
    assert raw.startswith(b"#!") and b"\r\n" not in raw
    assert raw.splitlines()[0] == b"#!/usr/bin/env python3"  # PATH picks the interpreter: the venv's here
