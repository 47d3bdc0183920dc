"""fatbin.py on small ELF files made here: a `.nv_fatbin` section of two fat binaries (SASS and PTX entries,
padding between them), one without the section, and broken ones."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from mxnet_byoc import fatbin

FATBIN_PY = Path(fatbin.__file__)


def entry(kind: int, arch: int, payload: bytes) -> bytes:
    """A 64-byte entry header (kind, version, header size, padded payload size, ..., arch at 28) and payload."""
    padded = payload + b"\0" * (-len(payload) % 8)
    header = bytearray(64)
    struct.pack_into("<HHIQ", header, 0, kind, 0x0101, 64, len(padded))
    struct.pack_into("<I", header, 16, len(payload))
    struct.pack_into("<I", header, 28, arch)
    return bytes(header) + padded


def fat_binary(*entries: bytes) -> bytes:
    body = b"".join(entries)
    return struct.pack("<IHHQ", fatbin.FATBIN_MAGIC, 1, 16, len(body)) + body


def elf(sections: dict[bytes, bytes]) -> bytes:
    """A little-endian ELF64 file with these sections (and .shstrtab), section headers at the end."""
    names = b"\0.shstrtab\0" + b"".join(name + b"\0" for name in sections)
    body = bytearray(64)
    table = [struct.pack("<IIQQQQIIQQ", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)]
    contents = [(1, names), *((names.index(name + b"\0"), data) for name, data in sections.items())]
    for name_at, data in contents:
        table.append(struct.pack("<IIQQQQIIQQ", name_at, 1, 0, 0, len(body), len(data), 0, 0, 8, 0))
        body += data + b"\0" * (-len(data) % 8)
    shoff = len(body)
    body += b"".join(table)
    struct.pack_into("<4sBBB", body, 0, b"\x7fELF", 2, 1, 1)
    struct.pack_into("<HHIQQQIHHHHHH", body, 16, 3, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, len(table), 1)
    return bytes(body)


TWO_FATBINS = (fat_binary(entry(fatbin.KIND_SASS, 80, b"sass80"), entry(fatbin.KIND_SASS, 86, b"sass-86!"))
               + b"\0" * 8  # padding between fat binaries
               + fat_binary(entry(fatbin.KIND_PTX, 86, b".version 7.4"), entry(fatbin.KIND_SASS, 86, b"x")))


def write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "libfake.so"
    path.write_bytes(data)
    return path


def test_reads_sass_and_ptx_architectures_of_every_fat_binary(tmp_path):
    path = write(tmp_path, elf({b".text": b"\x90" * 40, b".nv_fatbin": TWO_FATBINS}))
    assert fatbin.read(path) == {"library": str(path), "sass": [80, 86], "ptx": [86], "fatbins": 2, "entries": 4}


def test_runs_as_a_script_on_its_own_as_the_image_build_runs_it(tmp_path):
    """The Dockerfile copies the one file and runs it with Debian's python3: no import of the package."""
    path = write(tmp_path, elf({b".nv_fatbin": TWO_FATBINS}))
    result = subprocess.run([sys.executable, "-I", str(FATBIN_PY), str(path)], capture_output=True, text=True,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"library": str(path), "sass": [80, 86], "ptx": [86], "fatbins": 2,
                                         "entries": 4}


def test_a_library_without_gpu_code_fails_the_build_with_a_reason(tmp_path):
    path = write(tmp_path, elf({b".text": b"\x90" * 16}))
    with pytest.raises(fatbin.FatbinError, match="has no .nv_fatbin section: it carries no CUDA code"):
        fatbin.read(path)
    result = subprocess.run([sys.executable, "-I", str(FATBIN_PY), str(path)], capture_output=True, text=True)
    assert result.returncode == 1 and result.stdout == ""
    assert "has no .nv_fatbin section" in result.stderr


@pytest.mark.parametrize("data,message", [
    (b"#!/bin/sh\n" * 10, "not an ELF file"),
    (elf({b".nv_fatbin": TWO_FATBINS})[:4] + b"\x01" + elf({b".nv_fatbin": TWO_FATBINS})[5:], "not a little-endian 64"),
    (elf({b".nv_fatbin": fat_binary(entry(fatbin.KIND_SASS, 80, b"sass80"))[:-8]}), "runs past its section"),
    (elf({b".nv_fatbin": b"\0" * 16}), "no SASS or PTX found"),
])
def test_broken_input_is_a_fatbin_error(tmp_path, data, message):
    with pytest.raises(fatbin.FatbinError, match=message):
        fatbin.read(write(tmp_path, data))


def test_an_entry_running_past_its_fat_binary_is_an_error(tmp_path):
    one = bytearray(fat_binary(entry(fatbin.KIND_SASS, 80, b"sass80")))
    struct.pack_into("<Q", one, 16 + 8, 4096)  # the entry claims a payload larger than its fat binary
    with pytest.raises(fatbin.FatbinError, match="runs past its fat binary"):
        fatbin.read(write(tmp_path, elf({b".nv_fatbin": bytes(one)})))
