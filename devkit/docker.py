"""`docker run` as the tests, benches and the demo use it: host network, mounts, environment, image tags."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

from . import shell

# The Makefile exports its tags for `make image-cpu` / `make image-gpu`, so every caller agrees with it.
CPU_IMAGE = os.environ.get("CPU_IMAGE") or "mxnet-byoc:cpu"
GPU_IMAGE = os.environ.get("GPU_IMAGE") or "mxnet-byoc:gpu"


def container_name(kind: str) -> str:
    """A name no other container has, saying what it is (`mxnet-byoc-<kind>-...`)."""
    return f"mxnet-byoc-{kind}-{uuid.uuid4().hex[:12]}"


def docker_command(image: str, *args: str, name: str | None = None, mounts: Mapping[Path, str] | None = None,
                   env: Mapping[str, str] | None = None, user: str | None = None, detach: bool = False,
                   extra: Sequence[str] = ()) -> list[str]:
    """`docker run` on the host network: removed when it exits, or left (for `docker inspect`) when
    `detach`; `mounts` maps host paths to `/inside[:ro]`."""
    cmd = ["docker", "run", "-d" if detach else "--rm", "--network", "host"]
    if name:
        cmd += ["--name", name]
    if user:
        cmd += ["--user", user]
    for host, inside in (mounts or {}).items():
        cmd += ["-v", f"{host}:{inside}"]
    for key, value in (env or {}).items():
        cmd += ["-e", f"{key}={value}"]
    return [*cmd, *extra, image, *args]


def docker_run(image: str, *args: str, mounts: Mapping[Path, str] | None = None, env: Mapping[str, str] | None = None,
               user: str | None = None, timeout: float = 900, extra: Sequence[str] = ()) -> shell.Finished:
    """A container to completion; it is removed even on a timeout."""
    name = container_name("run")
    cmd = docker_command(image, *args, name=name, mounts=mounts, env=env, user=user, extra=extra)
    return shell.run(cmd, timeout=timeout, on_timeout=lambda: remove(name))


def remove(name: str) -> None:
    subprocess.run(["docker", "rm", "-f", name], capture_output=True)
