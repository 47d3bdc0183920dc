"""Checkpoints on disk (checkpoints.py): written, read back, skipped when unusable, pruned."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest

from mxnet_byoc.train import checkpoints
from mxnet_byoc.train.checkpoints import Checkpoint, CheckpointError

IDENTITY = {"model": "mlp", "num_params": 12, "steps_per_epoch": 46, "batch_size": 128, "optimizer": "adam"}


def checkpoint(epoch: int, step: int = 0, seed: int = 0) -> Checkpoint:
    rng = np.random.RandomState(seed)
    arrays = {"weights": mx.nd.array(rng.normal(size=12)), "opt0": mx.nd.array(rng.normal(size=12)),
              "aux:bn_running_mean": mx.nd.array(rng.normal(size=(2, 3)))}
    return Checkpoint(epoch=epoch, step=step, updates=epoch * 46 + step, arrays=arrays,
                      info={**IDENTITY, "history": [{"epoch": e + 1, "train_loss": 1.0 / (e + 1)}
                                                    for e in range(epoch)]})


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_a_saved_checkpoint_loads_back_whole(tmp_path):
    saved = checkpoint(3, 17, seed=1)
    meta = checkpoints.save(tmp_path, "algo-1", saved)
    assert meta == tmp_path / "checkpoint-algo-1-e0003-s0000017.json"
    loaded = checkpoints.load_latest(tmp_path, "algo-1", IDENTITY)
    assert (loaded.epoch, loaded.step, loaded.updates) == (3, 17, 3 * 46 + 17)
    assert loaded.info["history"] == saved.info["history"]
    assert set(loaded.arrays) == set(saved.arrays)
    for name, array in saved.arrays.items():
        np.testing.assert_array_equal(loaded.arrays[name].asnumpy(), array.asnumpy())
    assert not [n for n in names(tmp_path) if n.startswith(".")]  # no temporary file left behind


def test_only_the_newest_are_kept_and_the_newest_is_loaded(tmp_path):
    for epoch in range(1, 5):
        checkpoints.save(tmp_path, "algo-1", checkpoint(epoch))
    stems = ["checkpoint-algo-1-e0003-s0000000", "checkpoint-algo-1-e0004-s0000000"]
    assert checkpoints.KEEP == 2
    assert names(tmp_path) == sorted(f"{s}.{ext}" for s in stems for ext in ("json", "params"))
    assert checkpoints.load_latest(tmp_path, "algo-1", IDENTITY).epoch == 4
    # Mid-epoch positions order after the epoch's start.
    checkpoints.save(tmp_path, "algo-1", checkpoint(4, 5))
    assert checkpoints.load_latest(tmp_path, "algo-1", IDENTITY).step == 5
    assert checkpoints.load_latest(tmp_path, "algo-1", IDENTITY, at_most=(4, 4)).step == 0


def test_other_hosts_checkpoints_are_neither_loaded_nor_pruned(tmp_path):
    checkpoints.save(tmp_path, "algo-2", checkpoint(9))
    for epoch in range(1, 4):
        checkpoints.save(tmp_path, "algo-1", checkpoint(epoch))
    assert checkpoints.load_latest(tmp_path, "algo-1", IDENTITY).epoch == 3
    assert "checkpoint-algo-2-e0009-s0000000.params" in names(tmp_path)
    assert checkpoints.load_latest(tmp_path, "algo-3", IDENTITY) is None


@pytest.mark.parametrize("damage", ["truncated-params", "missing-params", "bad-json", "shapes-differ"])
def test_a_corrupt_newest_checkpoint_is_skipped_with_a_warning(tmp_path, caplog, damage):
    checkpoints.save(tmp_path, "algo-1", checkpoint(1))
    newest = checkpoints.save(tmp_path, "algo-1", checkpoint(2))
    params = newest.with_suffix(".params")
    if damage == "truncated-params":
        params.write_bytes(params.read_bytes()[:100])
    elif damage == "missing-params":
        params.unlink()
    elif damage == "bad-json":
        newest.write_text(newest.read_text()[:-10])
    else:
        info = json.loads(newest.read_text())
        info["arrays"]["weights"] = [13]
        newest.write_text(json.dumps(info))
    with caplog.at_level(logging.WARNING, logger=checkpoints.__name__):
        loaded = checkpoints.load_latest(tmp_path, "algo-1", IDENTITY)
    assert loaded.epoch == 1
    assert any("skipping corrupt checkpoint checkpoint-algo-1-e0002-s0000000.json" in r.getMessage()
               for r in caplog.records), caplog.text


def test_a_checkpoint_made_with_other_settings_is_skipped(tmp_path, caplog):
    checkpoints.save(tmp_path, "algo-1", checkpoint(2))
    with caplog.at_level(logging.WARNING, logger=checkpoints.__name__):
        assert checkpoints.load_latest(tmp_path, "algo-1", {**IDENTITY, "batch_size": 64}) is None
    assert "made with other settings {'batch_size': (128, 64)}" in caplog.text


def test_an_unwritable_folder_is_a_checkpoint_error(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    with pytest.raises(CheckpointError, match=f"cannot write a checkpoint to {blocker}"):
        checkpoints.save(blocker, "algo-1", checkpoint(1))
