#!/usr/bin/env python3
"""Image figures: build times (cold, cached, after a code change) and sizes of the CPU and GPU images.

    .venv/bin/python bench/image_bench.py [--mode base,cpu,gpu] [--figures FILE]

- base: `scripts/make-base-image.sh` from nothing (debootstrap from the Debian mirror, then import),
  under a throwaway tag and cache folder, so the real debian:bookworm-slim is left alone;
- cold: `docker build --no-cache` (every layer rebuilt, every wheel downloaded again; the base image
  is there, as it is after `make base-image`);
- cached: the same build again (what `make test` costs when nothing changed);
- code change: one file under container/ changed (the usual edit-and-rebuild loop).
Builds use throwaway tags (mxnet-byoc-bench:*), removed at the end. The machine is shared: expect ±20%.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from devkit import shell
from devkit.project import ROOT, SCRIPTS
from figures import Figure, Mode, main

BASE_IMAGE = os.environ.get("BASE_IMAGE", "debian:bookworm-slim")


def run(cmd: list[str], env: Mapping[str, str] | None = None) -> float:
    """Seconds `cmd` took; the bench stops with its output when it fails."""
    done = shell.run(cmd, timeout=None, env=env)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.log[-shell.TAIL:]}")
    return done.seconds


def size_mb(image: str) -> float:
    return int(shell.sh("docker", "image", "inspect", "--format", "{{.Size}}", image).stdout) / 1e6


def build(flavour: str, tag: str, context: Path, no_cache: bool = False) -> float:
    cmd = ["docker", "build", "--network", "host", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}",
           "-f", str(context / "docker" / f"Dockerfile.{flavour}"), "-t", tag, str(context)]
    if no_cache:
        cmd.insert(2, "--no-cache")
    return run(cmd)


def bench_base() -> dict[str, float]:
    tag = "mxnet-byoc-bench/debian:bookworm-slim"
    with tempfile.TemporaryDirectory(dir=ROOT / "build") as cache:
        env = {**os.environ, "BASE_IMAGE": tag, "BASE_CACHE_DIR": cache, "BASE_IMAGE_PULL": "0"}
        seconds = run([str(SCRIPTS / "make-base-image.sh")], env=env)
        reimport = 0.0
        subprocess.run(["docker", "rmi", tag], capture_output=True)
        reimport = run([str(SCRIPTS / "make-base-image.sh")], env=env)  # from the cached tarball
        size = size_mb(tag)
    subprocess.run(["docker", "rmi", tag], capture_output=True)
    return {"debootstrap_and_import_s": seconds, "import_from_cache_s": reimport, "size_mb": size}


def bench_flavour(flavour: str) -> dict[str, float]:
    tag = f"mxnet-byoc-bench:{flavour}"
    with tempfile.TemporaryDirectory(dir=ROOT / "build") as tmp:
        context = Path(tmp)
        shutil.copytree(ROOT / "docker", context / "docker")
        shutil.copytree(ROOT / "container", context / "container",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        shutil.copy(ROOT / ".dockerignore", context / ".dockerignore")
        figures = {"cold_s": build(flavour, tag, context, no_cache=True)}
        figures["cached_s"] = build(flavour, tag, context)
        with open(context / "container" / "mxnet_byoc" / "__init__.py", "a") as f:
            f.write("# a change\n")
        figures["code_change_s"] = build(flavour, tag, context)
        figures["size_mb"] = size_mb(tag)
    subprocess.run(["docker", "rmi", tag], capture_output=True)
    return figures


def setup(args: argparse.Namespace) -> None:
    run([str(SCRIPTS / "ensure-docker.sh")])
    run([str(SCRIPTS / "make-base-image.sh")])
    run(["make", "-C", str(ROOT), "extra-ca"])  # the proxy CA, as `make image-*` would use it


def base_mode(_: None) -> list[Figure]:
    f = bench_base()
    print(f"base image: debootstrap + import {f['debootstrap_and_import_s']:.0f} s, "
          f"import from the cached tarball {f['import_from_cache_s']:.1f} s, {f['size_mb']:.0f} MB", flush=True)
    return [Figure("images.base", "debian:bookworm-slim made here (debootstrap + import; import from the cached root "
                   "file system)", f"{f['size_mb']:.0f} MB, {f['debootstrap_and_import_s']:.0f} s; "
                   f"{f['import_from_cache_s']:.1f} s")]


def flavour_mode(flavour: str) -> Callable[[None], list[Figure]]:
    def measure(_: None) -> list[Figure]:
        f = bench_flavour(flavour)
        print(f"{flavour} image: cold build {f['cold_s']:.0f} s, cached {f['cached_s']:.1f} s, "
              f"after a code change {f['code_change_s']:.1f} s, {f['size_mb']:.0f} MB", flush=True)
        return [Figure(f"images.{flavour}.size", f"mxnet-byoc:{flavour}: image size", f"{f['size_mb']:,.0f} MB"),
                Figure(f"images.{flavour}.build", f"mxnet-byoc:{flavour}: cold build (--no-cache); nothing changed; "
                       "one file in container/ changed", f"{f['cold_s']:.0f} s; {f['cached_s']:.1f} s; "
                       f"{f['code_change_s']:.1f} s")]

    return measure


MODES = {"base": Mode(base_mode, "the base image from nothing"),
         "cpu": Mode(flavour_mode("cpu"), "the CPU image's builds and size"),
         "gpu": Mode(flavour_mode("gpu"), "the GPU image's builds and size")}


if __name__ == "__main__":
    main(__doc__.split("\n\n")[0], MODES, list(MODES), lambda parser: None, setup)
