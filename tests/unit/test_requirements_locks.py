"""The images' lock files agree with the hand-written pins they are generated from (`make locks`)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]*)==([^\s;#\\]+)", re.M)


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, str]:
    return {_norm(n): v for n, v in PIN.findall(path.read_text())}


def _check(lock: Path, wanted: dict[str, str]) -> None:
    locked = pins(lock)
    stale = {name: (version, locked.get(name)) for name, version in wanted.items() if locked.get(name) != version}
    assert not stale, f"{lock.name} is stale (pin: (wanted, locked)) {stale}: run `make locks`"


def test_cpu_lock_holds_every_runtime_pin() -> None:
    _check(DOCKER / "requirements-cpu.lock", pins(DOCKER / "requirements.txt"))


def test_gpu_lock_holds_the_runtime_pins_with_mxnet_cu112() -> None:
    wanted = {n: v for n, v in pins(DOCKER / "requirements.txt").items() if n != "mxnet"}
    wanted.update(pins(DOCKER / "requirements-gpu.txt"))
    _check(DOCKER / "requirements-gpu.lock", wanted)
    assert "mxnet" not in pins(DOCKER / "requirements-gpu.lock")  # never both MXNet builds


def test_every_locked_requirement_has_a_hash() -> None:
    for lock in ("requirements-cpu.lock", "requirements-gpu.lock"):
        blocks = re.split(r"\n(?=[A-Za-z0-9])", (DOCKER / lock).read_text())
        for block in blocks:
            if PIN.match(block):
                assert "--hash=sha256:" in block, f"{lock}: {block.splitlines()[0]} has no hash"
