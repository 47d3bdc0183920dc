"""Checkpoints on disk (checkpoints.py): written, read back, pruned, and a run's own kept apart from every
file of its host that it cannot resume from (corrupt, made with other settings, past where the hosts resume)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest

from mxnet_byoc.train import checkpoints
from mxnet_byoc.train.checkpoints import Checkpoint, CheckpointError, Position, Store

IDENTITY = {"model": "mlp", "num_params": 12, "steps_per_epoch": 46, "batch_size": 128, "optimizer": "adam"}
STEPS = IDENTITY["steps_per_epoch"]


def checkpoint(epoch: int, step: int = 0, seed: int = 0) -> Checkpoint:
    rng = np.random.RandomState(seed)
    arrays = {"weights": mx.nd.array(rng.normal(size=12)), "opt0": mx.nd.array(rng.normal(size=12)),
              "aux:bn_running_mean": mx.nd.array(rng.normal(size=(2, 3)))}
    return Checkpoint(epoch=epoch, step=step, updates=epoch * STEPS + step, arrays=arrays,
                      info={"history": [{"epoch": e + 1, "train_loss": 1.0 / (e + 1)} for e in range(epoch)]})


def store(directory: Path, host: str = "algo-1", **settings) -> Store:
    return Store(directory, host, {**IDENTITY, **settings})


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.is_file()) if directory.is_dir() else []


def stem(epoch: int, step: int = 0, host: str = "algo-1") -> str:
    return f"checkpoint-{host}-e{epoch:04d}-s{step:07d}"


def pair(epoch: int, step: int = 0, host: str = "algo-1") -> list[str]:
    return [f"{stem(epoch, step, host)}.json", f"{stem(epoch, step, host)}.params"]


def earlier_run(directory: Path, *epochs: int, host: str = "algo-1", **settings) -> None:
    """Checkpoints left by earlier runs (each run's writer prunes only what it wrote)."""
    for epoch in epochs:
        store(directory, host, **settings).save(checkpoint(epoch, seed=epoch))


def damage(directory: Path, epoch: int, how: str) -> None:
    meta = directory / f"{stem(epoch)}.json"
    params = meta.with_suffix(".params")
    if how == "truncated-params":
        params.write_bytes(params.read_bytes()[:100])
    elif how == "missing-params":
        params.unlink()
    elif how == "half-written-json":
        meta.write_text(meta.read_text()[:-10])
    elif how == "json-not-an-object":
        meta.write_text("[1, 2]")
    elif how == "shapes-differ":
        info = json.loads(meta.read_text())
        info["arrays"]["weights"] = [13]
        meta.write_text(json.dumps(info))
    else:
        raise ValueError(how)


def test_a_saved_checkpoint_loads_back_whole(tmp_path):
    saved = checkpoint(3, 17, seed=1)
    meta = store(tmp_path).save(saved)
    assert meta == tmp_path / f"{stem(3, 17)}.json"
    loaded = store(tmp_path).resume(STEPS)
    assert (loaded.epoch, loaded.step, loaded.updates) == (3, 17, 3 * STEPS + 17)
    assert loaded.position == Position(3, 17)
    assert loaded.info["history"] == saved.info["history"]
    assert {k: loaded.info[k] for k in IDENTITY} == IDENTITY  # the settings travel with the checkpoint
    assert set(loaded.arrays) == set(saved.arrays)
    for name, array in saved.arrays.items():
        np.testing.assert_array_equal(loaded.arrays[name].asnumpy(), array.asnumpy())
    assert names(tmp_path) == pair(3, 17)  # no temporary file left behind


def test_a_run_keeps_its_newest_and_a_restart_resumes_from_the_newest(tmp_path):
    run = store(tmp_path)
    assert run.resume(STEPS) is None
    for epoch in range(1, 5):
        run.save(checkpoint(epoch))
    assert checkpoints.KEEP == 2
    assert names(tmp_path) == pair(3) + pair(4)
    restarted = store(tmp_path)
    assert restarted.resume(STEPS).epoch == 4
    # Mid-epoch positions order after the epoch's start; the restarted run prunes what it resumed over.
    restarted.save(checkpoint(4, 5))
    assert names(tmp_path) == pair(4) + pair(4, 5)
    assert store(tmp_path).resume(STEPS).position == Position(4, 5)


def test_other_hosts_checkpoints_are_neither_loaded_nor_pruned_nor_set_aside(tmp_path):
    earlier_run(tmp_path, 9, host="algo-2")
    earlier_run(tmp_path, 7, host="algo-1", batch_size=64)  # mismatched, set aside: algo-2's file stays
    run = store(tmp_path)
    assert run.resume(STEPS) is None
    for epoch in range(1, 4):
        run.save(checkpoint(epoch))
    assert store(tmp_path).resume(STEPS).epoch == 3
    assert set(pair(9, host="algo-2")) <= set(names(tmp_path))
    assert store(tmp_path, host="algo-3").resume(STEPS) is None
    assert names(tmp_path / checkpoints.SET_ASIDE) == pair(7)


@pytest.mark.parametrize("how", ["truncated-params", "missing-params", "half-written-json", "json-not-an-object",
                                 "shapes-differ"])
def test_a_corrupt_newest_checkpoint_is_set_aside_with_a_warning(tmp_path, caplog, how):
    earlier_run(tmp_path, 1, 2)
    damage(tmp_path, 2, how)
    damaged = sorted({*pair(2)} & {*names(tmp_path)})
    with caplog.at_level(logging.WARNING, logger=checkpoints.__name__):
        loaded = store(tmp_path).resume(STEPS)
    assert loaded.epoch == 1
    assert names(tmp_path) == pair(1)
    assert names(tmp_path / checkpoints.SET_ASIDE) == damaged
    message = next(r.getMessage() for r in caplog.records if stem(2) in r.getMessage())
    assert message.startswith(f"set aside {', '.join(damaged)}: corrupt ("), message
    assert f"moved to {tmp_path / 'set-aside'}, which SageMaker uploads to S3" in message


def test_a_checkpoint_made_with_other_settings_is_set_aside(tmp_path, caplog):
    earlier_run(tmp_path, 2)
    with caplog.at_level(logging.WARNING, logger=checkpoints.__name__):
        assert store(tmp_path, batch_size=64).resume(STEPS) is None
    assert f"set aside {stem(2)}.json, {stem(2)}.params: made with other settings: batch_size 128 (this job: 64)" \
        in caplog.text
    assert names(tmp_path) == [] and names(tmp_path / "set-aside") == pair(2)


@pytest.mark.parametrize("leftover", ["params-only", "temporary-files"])
def test_files_of_a_write_cut_short_are_set_aside(tmp_path, caplog, leftover):
    earlier_run(tmp_path, 1)
    if leftover == "params-only":  # killed between the two files: the .json, written last, never came
        (tmp_path / f"{stem(2)}.params").write_bytes(b"half")
        expected = [f"{stem(2)}.params"]
    else:
        (tmp_path / f".{stem(1)}.json.tmp").write_text("{")
        (tmp_path / f".{stem(2)}.params.tmp").write_bytes(b"half")
        expected = [f".{stem(1)}.json.tmp", f".{stem(2)}.params.tmp"]
    with caplog.at_level(logging.WARNING, logger=checkpoints.__name__):
        assert store(tmp_path).resume(STEPS).epoch == 1
    assert names(tmp_path) == pair(1)
    assert names(tmp_path / "set-aside") == expected
    assert "set aside" in caplog.text


@pytest.mark.parametrize("case", ["corrupt", "other-settings"])
def test_a_fresh_run_over_unusable_newer_checkpoints_keeps_its_own(tmp_path, case):
    """Unusable files whose names sort above everything the new run writes can never push its own out."""
    if case == "corrupt":
        earlier_run(tmp_path, 7, 8, 9)
        for epoch in (7, 8, 9):
            damage(tmp_path, epoch, "truncated-params")
    else:
        earlier_run(tmp_path, 7, 8, 9, batch_size=64)
    run = store(tmp_path)
    assert run.resume(STEPS) is None
    run.save(checkpoint(1))
    run.save(checkpoint(1, 20))  # stopped mid-epoch
    assert names(tmp_path) == pair(1) + pair(1, 20)
    assert store(tmp_path).resume(STEPS).position == Position(1, 20)
    # Nothing of the earlier run was deleted: all of it is in set-aside/.
    assert names(tmp_path / "set-aside") == pair(7) + pair(8) + pair(9)


def test_set_aside_twice_keeps_both(tmp_path):
    earlier_run(tmp_path, 3, batch_size=64)
    assert store(tmp_path).resume(STEPS) is None
    earlier_run(tmp_path, 3, batch_size=32)
    assert store(tmp_path).resume(STEPS) is None
    assert names(tmp_path / "set-aside") == sorted([*pair(3), *(f"{n}.1" for n in pair(3))])
    assert json.loads((tmp_path / "set-aside" / f"{stem(3)}.json.1").read_text())["batch_size"] == 32


def test_files_that_cannot_be_moved_stay_and_still_cannot_displace_the_runs_own(tmp_path, caplog):
    earlier_run(tmp_path, 9, batch_size=64)
    (tmp_path / "set-aside").write_text("a file where the folder would go")
    run = store(tmp_path)
    with caplog.at_level(logging.WARNING, logger=checkpoints.__name__):
        assert run.resume(STEPS) is None
    assert "could not be moved" in caplog.text and "stays where it is" in caplog.text
    for epoch in (1, 2, 3):
        run.save(checkpoint(epoch))
    assert names(tmp_path) == sorted(pair(2) + pair(3) + pair(9) + ["set-aside"])


# -- several hosts: `agree` gives the position every host resumes from (distributed.agree_min) --------------

def agree_on(epoch: int, step: int = 0):
    """What the other hosts answer: they resume from (epoch, step) at the latest."""
    seen = []

    def agree(mine: int) -> int:
        seen.append(mine)
        return min(mine, Position(epoch, step).index(STEPS))
    agree.seen = seen
    return agree


def test_hosts_resume_together_from_the_oldest_newest_and_what_lies_past_it_is_set_aside(tmp_path, caplog):
    run = store(tmp_path)
    for epoch in (2, 3, 4):
        run.save(checkpoint(epoch))  # keeps 3 and 4
    agree = agree_on(3)
    with caplog.at_level(logging.WARNING, logger=checkpoints.__name__):
        loaded = store(tmp_path).resume(STEPS, agree)
    assert agree.seen == [4 * STEPS]
    assert loaded.epoch == 3
    assert names(tmp_path) == pair(3) and names(tmp_path / "set-aside") == pair(4)
    assert "past epoch 3 step 0, where the hosts resume together" in caplog.text


def test_when_another_host_has_none_every_host_starts_afresh(tmp_path):
    earlier_run(tmp_path, 3, 4)
    run = store(tmp_path)
    assert run.resume(STEPS, agree_on(0)) is None
    assert names(tmp_path) == [] and names(tmp_path / "set-aside") == pair(3) + pair(4)
    run.save(checkpoint(1))
    assert names(tmp_path) == pair(1)


def test_a_host_without_the_agreed_checkpoint_fails_with_a_reason(tmp_path):
    earlier_run(tmp_path, 4)
    with pytest.raises(CheckpointError, match=r"^algo-1 has no checkpoint at epoch 3 step 10, where the other "
                                              r"hosts resume from; clear the checkpoint folder"):
        store(tmp_path).resume(STEPS, agree_on(3, 10))


def test_a_host_with_no_checkpoint_offers_the_start(tmp_path):
    agree = agree_on(5)
    assert store(tmp_path).resume(STEPS, agree) is None
    assert agree.seen == [0]


def test_an_unwritable_folder_is_a_checkpoint_error(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    with pytest.raises(CheckpointError, match=f"cannot write a checkpoint to {blocker}"):
        store(blocker).save(checkpoint(1))
