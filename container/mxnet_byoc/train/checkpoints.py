"""Training state on disk: written every epoch and on SIGTERM, read back at start to resume.

A checkpoint is two files: `<stem>.params` (arrays, written first) and `<stem>.json` (position and
checks, written last, so its presence marks a complete checkpoint). Stems carry the host name because
several hosts may share one checkpoint folder in S3.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ReasonError

log = logging.getLogger(__name__)

KEEP = 2  # the newest two, so a checkpoint torn by a kill still leaves a good one behind


class CheckpointError(ReasonError):
    """The checkpoint folder cannot be written; the message says where and why."""


@dataclass
class Checkpoint:
    epoch: int  # epoch in progress (0-based); a finished epoch e is saved as (e + 1, 0)
    step: int  # steps already done within that epoch
    updates: int  # optimizer updates so far (Adam's bias correction, the schedule)
    arrays: dict[str, Any]  # name -> NDArray
    info: dict[str, Any]


def _stem(host: str, epoch: int, step: int) -> str:
    return f"checkpoint-{host}-e{epoch:04d}-s{step:07d}"


_NAME = re.compile(r"^checkpoint-(?P<host>.+)-e(?P<epoch>\d{4,})-s(?P<step>\d{7,})\.json$")


def save(directory: Path, host: str, ckpt: Checkpoint) -> Path:
    import mxnet as mx

    directory = Path(directory)
    stem = _stem(host, ckpt.epoch, ckpt.step)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        params = directory / f"{stem}.params"
        tmp = directory / f".{stem}.params.tmp"
        mx.nd.save(str(tmp), {k: v.as_in_context(mx.cpu()) for k, v in ckpt.arrays.items()})
        os.replace(tmp, params)
        info = {**ckpt.info, "epoch": ckpt.epoch, "step": ckpt.step, "updates": ckpt.updates,
                "arrays": {k: list(v.shape) for k, v in ckpt.arrays.items()}}
        meta_tmp = directory / f".{stem}.json.tmp"
        meta_tmp.write_text(json.dumps(info, indent=1, sort_keys=True))
        os.replace(meta_tmp, directory / f"{stem}.json")
    except (OSError, mx.base.MXNetError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e).strip().splitlines()[0][:300]
        raise CheckpointError(f"cannot write a checkpoint to {directory}: {why}") from e
    _prune(directory, host)
    return directory / f"{stem}.json"


def _listing(directory: Path, host: str) -> list[tuple[int, int, Path]]:
    found = []
    if not directory.is_dir():
        return found
    for path in directory.iterdir():
        m = _NAME.match(path.name)
        if m and m.group("host") == host:
            found.append((int(m.group("epoch")), int(m.group("step")), path))
    return sorted(found, reverse=True)


def _prune(directory: Path, host: str) -> None:
    for _, _, meta in _listing(directory, host)[KEEP:]:
        for path in (meta, meta.with_suffix(".params")):
            try:
                path.unlink()
            except OSError:
                pass


def load_latest(directory: Path, host: str, expect: dict[str, Any],
                at_most: tuple[int, int] | None = None) -> Checkpoint | None:
    """The newest checkpoint of `host` (at or before `at_most`) whose arrays load and whose `expect`
    fields match; None if none."""
    import mxnet as mx

    for epoch, step, meta in _listing(Path(directory), host):
        if at_most is not None and (epoch, step) > at_most:
            continue
        try:
            info = json.loads(meta.read_text())
            arrays = mx.nd.load(str(meta.with_suffix(".params")))
            mismatched = {k: (info.get(k), v) for k, v in expect.items() if info.get(k) != v}
            if mismatched:
                log.warning("skipping checkpoint %s: it was made with other settings %s", meta.name, mismatched)
                continue
            shapes = {k: list(v.shape) for k, v in arrays.items()}
            if shapes != info.get("arrays"):
                raise ValueError("array shapes differ from the checkpoint's record")
            return Checkpoint(epoch=epoch, step=step, updates=int(info["updates"]), arrays=arrays, info=info)
        except (OSError, ValueError, KeyError, mx.base.MXNetError) as e:
            log.warning("skipping corrupt checkpoint %s: %s", meta.name, str(e).splitlines()[0][:200])
    return None
