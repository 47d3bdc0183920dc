"""A tiny in-process `fit` (loop.py) on a few hundred real MNIST records.

Every optimizer learns, the metric lines come out, a restart resumes where it stopped, and several devices
train like one. The host path needs MXNet's NaiveEngine, which MXNet fixes when it starts: those runs go
to one subprocess (this file run as a script); the others run here, on the executor path, which is right
under either engine.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from mxnet_byoc.train import data, loop, metrics, runtime
from mxnet_byoc.train.environment import TrainingError
from mxnet_byoc.train.hyperparameters import Hyperparameters

N_TRAIN, N_VAL = 600, 300
BASE = {"model": "mlp", "epochs": 3, "batch_size": 32, "log_interval": 6, "seed": 3}
FLOOR = 0.65  # chance is 0.1; each optimizer below reaches 0.77-0.80 here
OPTIMIZERS = {
    "adam": {"optimizer": "adam"},
    "sgd": {"optimizer": "sgd", "momentum": 0.0, "learning_rate": 0.4},
    "momentum": {"optimizer": "sgd", "momentum": 0.9, "learning_rate": 0.05},
    "nesterov": {"optimizer": "nesterov", "momentum": 0.9, "learning_rate": 0.05},
}


@lru_cache(maxsize=1)
def records(mnist_dir: Path) -> tuple[data.Dataset, data.Dataset]:
    images = data.read_idx(mnist_dir / "train-images-idx3-ubyte.gz")[:N_TRAIN + N_VAL, None]
    labels = data.read_idx(mnist_dir / "train-labels-idx1-ubyte.gz")[:N_TRAIN + N_VAL].astype(np.int32)
    classes = list(range(10))
    return (data.Dataset(images[:N_TRAIN], labels[:N_TRAIN], classes),
            data.Dataset(images[N_TRAIN:], labels[N_TRAIN:], classes))


def train_once(mnist_dir: Path, devices: str = "cpu(0)", naive_engine: bool = False,
               checkpoint_dir: str | None = None, **hps) -> dict:
    train, val = records(mnist_dir)
    contexts = runtime.resolve(Hyperparameters(contexts=devices), False, {}, gpu_present=False).contexts()
    lines: list[str] = []
    trainer, result = loop.fit(Hyperparameters(**{**BASE, **hps}), train, val, contexts, naive_engine=naive_engine,
                               checkpoint_dir=checkpoint_dir, emit=lines.append)
    return {"history": result.history, "lines": lines, "host_path": trainer.host,
            "device_batch": trainer.device_batch, "global_batch": trainer.global_batch,
            "weights": trainer.replicas[0].weights.asnumpy().tolist()}


def check_learned(run: dict, epochs: int = BASE["epochs"]) -> None:
    """It learned, and said so in one metric line per epoch that SageMaker's regexes read back."""
    history = run["history"]
    assert [h["epoch"] for h in history] == list(range(1, epochs + 1))
    assert history[-1]["validation_accuracy"] > FLOOR, history
    assert history[-1]["train_loss"] < history[0]["train_loss"], history
    epoch_lines = [line for line in run["lines"] if line.startswith("epoch=")]
    assert len(epoch_lines) == len(history)
    for line, values in zip(epoch_lines, history):
        for definition in metrics.metric_definitions():
            found = re.search(definition["Regex"], line)
            if definition["Name"] in values:
                assert float(found.group(1)) == pytest.approx(values[definition["Name"]], abs=0.51), line
    # 600 records, batch 32: 18 steps an epoch, a progress line every 6.
    assert sum(line.startswith("progress: epoch ") for line in run["lines"]) == 3 * epochs


@pytest.fixture(scope="module")
def host_path_runs(mnist_dir) -> dict:
    """Runs under the NaiveEngine, as `train` runs on a CPU, in a fresh interpreter."""
    cases = {"sgd": {**OPTIMIZERS["sgd"]}, "momentum": {**OPTIMIZERS["momentum"]},
             "adam-cnn": {"model": "cnn", "epochs": 2},
             "two-devices": {**OPTIMIZERS["momentum"], "devices": "cpu(0),cpu(1)"}}
    settings = runtime.resolve(Hyperparameters(), False, {"OMP_NUM_THREADS": "1"}, gpu_present=False)
    assert settings.naive_engine
    done = subprocess.run([sys.executable, __file__, str(mnist_dir), json.dumps(cases)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, **settings.environment()})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "MXNet start using engine: NaiveEngine" in done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_optimizer_learns_on_the_executor_path(mnist_dir, name):
    run = train_once(mnist_dir, **OPTIMIZERS[name])
    assert not run["host_path"]
    check_learned(run)


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam-cnn"])
def test_the_host_path_learns(host_path_runs, name):
    run = host_path_runs[name]
    assert run["host_path"]
    check_learned(run, epochs=2 if name == "adam-cnn" else BASE["epochs"])


def _same_training(one: dict, two: dict) -> None:
    # The same global batch split over two devices: the same updates up to rounding.
    assert (one["device_batch"], two["device_batch"], two["global_batch"]) == (32, 16, 32)
    for a, b in zip(one["history"], two["history"]):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=0.01)
    np.testing.assert_allclose(two["weights"], one["weights"], rtol=0, atol=2e-3)


def test_two_devices_train_like_one_on_the_host_path(host_path_runs):
    assert host_path_runs["two-devices"]["host_path"]
    _same_training(host_path_runs["momentum"], host_path_runs["two-devices"])


def test_two_devices_train_like_one_on_the_executor_path(mnist_dir):
    one = train_once(mnist_dir, **OPTIMIZERS["momentum"])
    two = train_once(mnist_dir, devices="cpu(0),cpu(1)", **OPTIMIZERS["momentum"])
    assert not two["host_path"]
    _same_training(one, two)


def test_a_batch_that_does_not_divide_evenly_takes_the_nearest_share(mnist_dir, caplog):
    with caplog.at_level(logging.WARNING, logger=loop.__name__):
        run = train_once(mnist_dir, devices="cpu(0),cpu(1),cpu(2)", epochs=2, **OPTIMIZERS["adam"])
    assert (run["device_batch"], run["global_batch"]) == (11, 33)
    assert ("batch_size 32 does not divide evenly over 3 devices x 1 hosts: each device takes 11 images per step, "
            "a global batch of 33") in caplog.text
    check_learned(run, epochs=2)


def test_fewer_records_than_one_batch_fail_with_a_reason(mnist_dir):
    train, val = records(mnist_dir)
    few = data.Dataset(train.images[:20], train.labels[:20], train.classes)
    contexts = runtime.resolve(Hyperparameters(), False, {}, gpu_present=False).contexts()
    with pytest.raises(TrainingError, match="^20 training records are fewer than one batch of 32$"):
        loop.fit(Hyperparameters(**BASE), few, val, contexts, emit=lambda line: None)


@pytest.mark.parametrize("batch_size, devices, hosts, share", [
    (128, 1, 1, 128), (128, 8, 1, 16), (128, 2, 4, 16),  # even splits are exact
    (128, 1, 3, 43), (128, 2, 3, 21), (100, 8, 1, 13), (1000, 3, 1, 333),  # else the nearest share
    (1, 2, 1, 1), (2, 1, 5, 1),  # at least one image per device
])
def test_device_batch(batch_size, devices, hosts, share):
    assert loop.device_batch(batch_size, devices, hosts) == share


def test_a_restarted_fit_resumes_from_its_checkpoint_and_ends_where_an_unbroken_one_does(mnist_dir, tmp_path):
    hps = {**OPTIMIZERS["momentum"], "lr_schedule": "constant", "checkpoint_dir": str(tmp_path)}
    first = train_once(mnist_dir, **{**hps, "epochs": 2})
    assert not any(line.startswith("resumed") for line in first["lines"])
    resumed = train_once(mnist_dir, **{**hps, "epochs": 3})
    assert resumed["lines"][0] == "resumed from epoch 2 step 0"
    assert [line.split(";")[0] for line in resumed["lines"] if line.startswith("epoch=")] == ["epoch=3"]
    assert resumed["history"][:2] == first["history"]
    assert resumed["history"][-1]["validation_accuracy"] > FLOOR
    unbroken = train_once(mnist_dir, **{**hps, "epochs": 3, "checkpoint_dir": None})
    np.testing.assert_allclose(resumed["weights"], unbroken["weights"], rtol=1e-5, atol=1e-6)
    assert resumed["history"][-1]["train_loss"] == pytest.approx(unbroken["history"][-1]["train_loss"], rel=1e-5)


if __name__ == "__main__":  # the host-path runs: `python test_fit.py MNIST_DIR CASES_JSON`
    naive = runtime.resolve(Hyperparameters(), False, os.environ, gpu_present=False).naive_engine
    results = {name: train_once(Path(sys.argv[1]), naive_engine=naive, **case)
               for name, case in json.loads(sys.argv[2]).items()}
    print(json.dumps(results))
