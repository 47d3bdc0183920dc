"""The two Dockerfiles' shared parts: the `wheels` stage (Horovod and the other source builds) is the same,
line for line, in both, so that Docker's build cache builds it once for the CPU and the GPU image; and both
have the `lean` stage that `make image-cpu-lean` stops at."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def stages(dockerfile: Path) -> dict[str, str]:
    """Each named stage's text, from its FROM line to the next stage's comment header or FROM."""
    text = dockerfile.read_text()
    parts = re.split(r"\n(?=# ---- )", text)
    named = {}
    for part in parts:
        m = re.search(r"^FROM \S+(?: AS (\S+))?$", part, re.M)
        if m:
            named[m.group(1) or "final"] = part
    return named


def test_the_wheels_stage_is_the_same_in_both_images() -> None:
    cpu, gpu = (stages(ROOT / "docker" / f"Dockerfile.{flavour}") for flavour in ("cpu", "gpu"))
    assert cpu["wheels"] == gpu["wheels"]
    assert "FROM ${BASE_IMAGE} AS wheels" in cpu["wheels"]  # nothing flavour-specific below it


def test_both_images_build_on_a_lean_stage() -> None:
    for flavour in ("cpu", "gpu"):
        named = stages(ROOT / "docker" / f"Dockerfile.{flavour}")
        assert {"builder", "package", "lean", "wheels", "builder-full", "final"} <= set(named), sorted(named)
        assert "FROM lean" in named["final"].splitlines()  # the full image is `lean` plus one layer of files
        # The lean stages come first: the legacy builder stops at --target lean before the source builds.
        text = (ROOT / "docker" / f"Dockerfile.{flavour}").read_text()
        assert text.index(" AS lean") < text.index(" AS wheels") < text.index(" AS builder-full")
