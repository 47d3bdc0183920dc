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


def test_the_full_images_locks_hold_their_pins() -> None:
    _check(DOCKER / "requirements-libraries.lock", pins(DOCKER / "requirements-libraries.txt"))
    _check(DOCKER / "requirements-source.lock", pins(DOCKER / "requirements-source.txt"))
    _check(DOCKER / "requirements-build.lock", pins(DOCKER / "requirements-build.txt"))
    # Built from source in the images' wheels stage, never installed from the libraries' lock as well;
    # gluoncv's opencv-python is left out for opencv-python-headless (the same cv2, no GUI libraries).
    libraries = pins(DOCKER / "requirements-libraries.lock")
    assert not set(libraries) & set(pins(DOCKER / "requirements-source.lock"))
    assert "opencv-python" not in libraries and "opencv-python-headless" in libraries


def test_the_libraries_change_nothing_the_lean_images_hold() -> None:
    """The full images add the libraries' lock on top of a lean venv: any package in both, one version."""
    libraries = pins(DOCKER / "requirements-libraries.lock")
    for lean in ("requirements-cpu.lock", "requirements-gpu.lock"):
        held = pins(DOCKER / lean)
        differ = {n: (v, libraries[n]) for n, v in held.items() if n in libraries and libraries[n] != v}
        assert not differ, f"{lean} and requirements-libraries.lock disagree: {differ}: run `make locks`"
    assert "mxnet" not in libraries and "mxnet-cu112" not in libraries


def test_every_full_image_lock_has_a_hash_for_every_requirement() -> None:
    for lock in ("requirements-libraries.lock", "requirements-source.lock", "requirements-build.lock"):
        for block in re.split(r"\n(?=[A-Za-z0-9])", (DOCKER / lock).read_text()):
            if PIN.match(block):
                assert "--hash=sha256:" in block, f"{lock}: {block.splitlines()[0]} has no hash"
