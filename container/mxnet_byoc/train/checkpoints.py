"""Training state on disk: written every epoch and on SIGTERM, read back at start to resume.

A checkpoint is two files: `<stem>.params` (arrays, written first) and `<stem>.json` (position and
checks, written last, so its presence marks a complete checkpoint). Stems carry the host name because
several hosts may share one checkpoint folder in S3.

A run owns its checkpoints. At start it reads every checkpoint of its host: those it can resume from (they
load, they were made with the job's settings, and no other host resumes from an older position) stay; every
other one is moved into `set-aside/` with a warning, never deleted. From then on pruning weighs only the
checkpoints the run kept or wrote, so files of an earlier run, however their names sort, can neither push the
run's newest out nor vanish unseen.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ReasonError

log = logging.getLogger(__name__)

KEEP = 2  # the newest two, so a checkpoint torn by a kill still leaves a good one behind
SET_ASIDE = "set-aside"  # inside the checkpoint folder, so SageMaker uploads it to checkpoint_s3_uri too


class CheckpointError(ReasonError):
    """The checkpoint folder cannot be written, or holds no checkpoint where the job must resume."""


class _Unusable(Exception):
    """Why a checkpoint cannot be resumed from (the message)."""


@dataclass(frozen=True, order=True)
class Position:
    epoch: int  # epoch in progress (0-based); a finished epoch e is saved as (e + 1, 0)
    step: int  # steps already done within that epoch

    def index(self, steps_per_epoch: int) -> int:
        """Steps done since the start of training."""
        return self.epoch * steps_per_epoch + self.step

    def __str__(self) -> str:
        return f"epoch {self.epoch} step {self.step}"


@dataclass
class Checkpoint:
    epoch: int
    step: int
    updates: int  # optimizer updates so far (Adam's bias correction, the schedule)
    arrays: dict[str, Any]  # name -> NDArray
    info: dict[str, Any]

    @property
    def position(self) -> Position:
        return Position(self.epoch, self.step)


_FILE = re.compile(r"^(?P<temp>\.)?checkpoint-(?P<host>.+)-e(?P<epoch>\d{4,})-s(?P<step>\d{7,})"
                   r"\.(?:json|params)(?(temp)\.tmp)$")


class Store:
    """One host's checkpoints in `directory`, for a job whose checkpoints must match `expect` (the settings
    that make a checkpoint's arrays mean the same thing: model, sizes, optimizer, steps per epoch)."""

    def __init__(self, directory: Path, host: str, expect: dict[str, Any]):
        self.directory, self.host, self.expect = Path(directory), host, dict(expect)
        self._lineage: set[Position] = set()  # what pruning may delete: checkpoints kept at start or written

    def stem(self, position: Position) -> str:
        return f"checkpoint-{self.host}-e{position.epoch:04d}-s{position.step:07d}"

    def _path(self, position: Position, suffix: str) -> Path:
        return self.directory / f"{self.stem(position)}{suffix}"

    # -- resuming ---------------------------------------------------------------------------------

    def resume(self, steps_per_epoch: int, agree: Callable[[int], int] | None = None) -> Checkpoint | None:
        """The newest checkpoint this run can resume from, or None to start afresh; every other checkpoint of
        this host that the run cannot use is set aside.

        With several hosts, `agree` takes this host's newest position (steps since the start, 0 for none) and
        returns the one every host resumes from: the smallest over the hosts (distributed.agree_min).
        """
        usable = self._sort_out()
        if agree is not None:
            mine = usable[0].position.index(steps_per_epoch) if usable else 0
            agreed = Position(*divmod(agree(mine), steps_per_epoch))
            ahead = [c for c in usable if c.position > agreed]
            for ckpt in ahead:
                self._set_aside(self._files(ckpt.position), f"it is past {agreed}, where the hosts resume "
                                "together (another host has no newer checkpoint)")
            usable = usable[len(ahead):]
            if agreed != Position(0, 0) and (not usable or usable[0].position != agreed):
                raise CheckpointError(f"{self.host} has no checkpoint at {agreed}, where the other hosts resume "
                                      f"from; clear the checkpoint folder of every host to start afresh")
        self._lineage = {c.position for c in usable}
        return usable[0] if usable else None

    def _listing(self) -> dict[Position, list[Path]]:
        """This host's checkpoint files (temporary ones of a cut-short write too) by position, newest first."""
        found: dict[Position, list[Path]] = {}
        if self.directory.is_dir():
            for path in self.directory.iterdir():
                m = _FILE.match(path.name)
                if m and m.group("host") == self.host and path.is_file():
                    found.setdefault(Position(int(m.group("epoch")), int(m.group("step"))), []).append(path)
        return {position: sorted(paths) for position, paths in sorted(found.items(), reverse=True)}

    def _files(self, position: Position) -> list[Path]:
        return [p for p in (self._path(position, ".json"), self._path(position, ".params")) if p.exists()]

    def _sort_out(self) -> list[Checkpoint]:
        """Every checkpoint of this host that can be resumed from, newest first; the rest set aside."""
        usable = []
        for position, paths in self._listing().items():
            pair = self._files(position)
            leftovers = [p for p in paths if p not in pair]
            try:
                usable.append(self._read(position))
            except _Unusable as e:
                self._set_aside(paths, str(e))
                continue
            if leftovers:
                self._set_aside(leftovers, "left by a write that was cut short")
        return usable

    def _read(self, position: Position) -> Checkpoint:
        import mxnet as mx

        meta = self._path(position, ".json")
        if not meta.exists():
            raise _Unusable("incomplete: its .json, written last, is missing")
        try:
            info = json.loads(meta.read_text())
            if not isinstance(info, dict):
                raise ValueError(f"{meta.name} holds no JSON object")
            mismatched = [f"{k} {info.get(k)!r} (this job: {v!r})" for k, v in self.expect.items() if info.get(k) != v]
            if mismatched:
                raise _Unusable(f"made with other settings: {', '.join(mismatched)}")
            params = self._path(position, ".params")
            if not params.exists():
                raise ValueError(f"{params.name} is missing")
            arrays = mx.nd.load(str(params))
            if {k: list(v.shape) for k, v in arrays.items()} != info.get("arrays"):
                raise ValueError("array shapes differ from the checkpoint's record")
            return Checkpoint(epoch=position.epoch, step=position.step, updates=int(info["updates"]),
                              arrays=arrays, info=info)
        except (OSError, ValueError, KeyError, TypeError, mx.base.MXNetError) as e:
            raise _Unusable(f"corrupt ({_first_line(e)})") from e

    def _set_aside(self, paths: list[Path], why: str) -> None:
        folder = self.directory / SET_ASIDE
        names = ", ".join(p.name for p in paths)
        try:
            folder.mkdir(exist_ok=True)
            suffix = _free_suffix(folder, [p.name for p in paths])
            for path in paths:
                os.replace(path, folder / f"{path.name}{suffix}")
        except OSError as e:
            # Left in place they still cannot displace this run's checkpoints: pruning never weighs them.
            log.warning("not resuming from %s: %s; it could not be moved to %s (%s) and stays where it is",
                        names, why, folder, e.strerror or e)
            return
        log.warning("set aside %s: %s; moved to %s, which SageMaker uploads to S3 with the other checkpoints",
                    names, why, folder)

    # -- saving -----------------------------------------------------------------------------------

    def save(self, ckpt: Checkpoint) -> Path:
        """Write `ckpt` (arrays first, the .json last) and prune this run's older checkpoints to KEEP."""
        import mxnet as mx

        stem = self.stem(ckpt.position)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp = self.directory / f".{stem}.params.tmp"
            mx.nd.save(str(tmp), {k: v.as_in_context(mx.cpu()) for k, v in ckpt.arrays.items()})
            os.replace(tmp, self._path(ckpt.position, ".params"))
            info = {**self.expect, **ckpt.info, "epoch": ckpt.epoch, "step": ckpt.step, "updates": ckpt.updates,
                    "arrays": {k: list(v.shape) for k, v in ckpt.arrays.items()}}
            meta_tmp = self.directory / f".{stem}.json.tmp"
            meta_tmp.write_text(json.dumps(info, indent=1, sort_keys=True))
            os.replace(meta_tmp, self._path(ckpt.position, ".json"))
        except (OSError, mx.base.MXNetError) as e:
            why = e.strerror if isinstance(e, OSError) and e.strerror else _first_line(e)
            raise CheckpointError(f"cannot write a checkpoint to {self.directory}: {why}") from e
        self._lineage.add(ckpt.position)
        self._prune()
        return self._path(ckpt.position, ".json")

    def _prune(self) -> None:
        for position in sorted(self._lineage, reverse=True)[KEEP:]:
            for suffix in (".json", ".params"):  # the .json first: without it the pair is incomplete
                try:
                    self._path(position, suffix).unlink()
                except OSError:
                    pass
            self._lineage.discard(position)


def _first_line(exc: BaseException) -> str:
    """The line of an error's message that says what went wrong (MXNet's follow a C++ traceback)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return (lines[-1] if lines[0].startswith("Traceback") else lines[0])[:300]


def _free_suffix(folder: Path, names: list[str]) -> str:
    """No suffix when none of `names` is in `folder` yet, else the first ".N" that makes all of them new there."""
    n = 0
    while True:
        suffix = f".{n}" if n else ""
        if not any((folder / f"{name}{suffix}").exists() for name in names):
            return suffix
        n += 1
