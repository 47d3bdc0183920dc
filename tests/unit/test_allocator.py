"""`serve` preloads jemalloc when the machine has it (mxnet_byoc.serve.allocator), unless LD_PRELOAD says
otherwise; the restart keeps the process (its PID) and its arguments."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mxnet_byoc.serve import allocator


@pytest.fixture
def fake_jemalloc(tmp_path: Path, monkeypatch) -> Path:
    library = tmp_path / "lib" / "x86_64-linux-gnu" / "libjemalloc.so.2"
    library.parent.mkdir(parents=True)
    library.write_bytes(b"")
    monkeypatch.setattr(allocator, "LIBRARY_PATTERNS", (str(tmp_path / "nothing" / "*.so.2"),
                                                         str(tmp_path / "lib" / "*-linux-gnu" / library.name)))
    return library


def test_the_allocator_is_added_to_the_environment_when_found(fake_jemalloc: Path) -> None:
    environ = {"PATH": "/usr/bin"}
    assert allocator.with_allocator(environ) == {"PATH": "/usr/bin", "LD_PRELOAD": str(fake_jemalloc)}
    assert environ == {"PATH": "/usr/bin"}  # the caller's mapping is left alone


@pytest.mark.parametrize("users", ["", "/usr/lib/libtcmalloc_minimal.so.4"])
def test_an_ld_preload_already_set_is_the_users_choice(fake_jemalloc: Path, users: str) -> None:
    # Even an empty one: `-e LD_PRELOAD=` is how a user keeps glibc's malloc.
    assert allocator.with_allocator({"LD_PRELOAD": users}) == {"LD_PRELOAD": users}


def test_no_allocator_on_the_machine_leaves_the_environment_as_it_is(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(allocator, "LIBRARY_PATTERNS", (str(tmp_path / "*.so.2"),))
    assert allocator.library_path() is None
    assert allocator.with_allocator({"PATH": "/usr/bin"}) == {"PATH": "/usr/bin"}


RESTART = """
import os, sys
from mxnet_byoc.serve import allocator
allocator.LIBRARY_PATTERNS = (sys.argv[1],)
print("before", os.getpid(), os.environ.get("LD_PRELOAD"), sys.argv[1:], flush=True)
allocator.restart_with_allocator()
print("after", os.getpid(), os.environ.get("LD_PRELOAD"), sys.argv[1:], flush=True)
"""


def _restart(library: str, **env: str) -> list[list[str]]:
    environ = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    result = subprocess.run([sys.executable, "-X", "utf8", "-c", RESTART, library, "extra"], capture_output=True,
                            text=True, env={**environ, **env}, check=True)
    return [line.split(" ", 3) for line in result.stdout.splitlines()]


def _a_real_library() -> str:
    # A library this interpreter has loaded already (libc) stands in for jemalloc, which this machine may lack:
    # preloading it changes nothing.
    maps = Path("/proc/self/maps").read_text().split()
    return allocator.library_path() or next(word for word in maps if "/libc.so" in word or "/libc-" in word)


def test_restart_runs_the_same_program_once_in_the_same_process_with_the_allocator() -> None:
    library = _a_real_library()
    lines = _restart(library)
    # Started again once (-c's program and its arguments kept, the interpreter's -X option too), same PID.
    assert [line[0] for line in lines] == ["before", "before", "after"], lines
    assert lines[0][1] == lines[1][1] == lines[2][1]
    assert lines[0][2] == "None" and lines[1][2] == lines[2][2] == library
    assert lines[2][3] == str([library, "extra"])


def test_restart_does_nothing_when_ld_preload_is_set() -> None:
    lines = _restart(_a_real_library(), LD_PRELOAD="")
    assert [line[0] for line in lines] == ["before", "after"]
    assert lines[1][2] == ""
