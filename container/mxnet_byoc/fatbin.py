"""Which GPU architectures a CUDA library carries code for, read from its ELF `.nv_fatbin` section.

The GPU image's build runs this on libmxnet.so and records the answer in the image (gpus.RECORD), so the
check at start (gpus.py) always compares against the build it ships, with no NVIDIA tool in the build:

    python3 fatbin.py /opt/venv/lib/python3.11/site-packages/mxnet/libmxnet.so > cuda-archs.json

The section holds fat binaries one after another (each 8-byte aligned), every one a 16-byte header and
its entries, each entry a header and its payload. Only the headers are read, through mmap, so a 500 MB
section costs a few hundred page reads. The layout, as NVIDIA's fatbinary.h of CUDA 10 and cuobjdump
show it (little-endian):

    fat binary header   u32 magic 0xBA55ED50, u16 version, u16 header size, u64 size of the entries
    entry header        u16 kind (1 PTX, 2 ELF with SASS), u16 version, u32 header size,
                        u64 payload size (padded), ... at offset 28: u32 architecture (86 for sm_86)

Standard library only, and no import of the rest of the package: the build runs this file on its own.
"""

from __future__ import annotations

import json
import mmap
import struct
import sys
from pathlib import Path
from typing import Any

FATBIN_MAGIC = 0xBA55ED50
SECTION = b".nv_fatbin"
KIND_PTX = 1
KIND_SASS = 2
_HEADER = struct.Struct("<IHHQ")
_ENTRY = struct.Struct("<HHIQ")
_ARCH_OFFSET = 28
_ENTRY_MIN = _ARCH_OFFSET + 4


class FatbinError(Exception):
    """The file is not an ELF library we can read, or its fat binaries are not laid out as expected."""


def section(data: mmap.mmap | bytes, name: bytes = SECTION) -> tuple[int, int] | None:
    """(offset, size) of the named section of a little-endian ELF64 file; None when it has none."""
    if data[:4] != b"\x7fELF":
        raise FatbinError("not an ELF file")
    if data[4] != 2 or data[5] != 1:
        raise FatbinError("not a little-endian 64-bit ELF file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    if shoff == 0 or shnum == 0 or shstrndx >= shnum or shentsize < 64:
        raise FatbinError("the ELF file has no readable section table")

    def header(index: int) -> tuple[int, int, int]:
        base = shoff + index * shentsize
        sh_name, = struct.unpack_from("<I", data, base)
        sh_offset, sh_size = struct.unpack_from("<QQ", data, base + 0x18)
        return sh_name, sh_offset, sh_size

    _, names_at, names_size = header(shstrndx)
    for index in range(shnum):
        sh_name, offset, size = header(index)
        if sh_name < names_size:
            end = data.find(b"\0", names_at + sh_name, names_at + names_size)
            if data[names_at + sh_name:end] == name:
                return offset, size
    return None


def architectures(data: mmap.mmap | bytes, offset: int, size: int) -> dict[str, Any]:
    """What the fat binaries in data[offset:offset+size] hold: SASS and PTX architectures, and counts."""
    sass: set[int] = set()
    ptx: set[int] = set()
    containers = entries = 0
    pos, end = offset, offset + size
    magic = struct.pack("<I", FATBIN_MAGIC)
    while pos + _HEADER.size <= end:
        found = data.find(magic, pos, end)  # skips the padding between fat binaries
        if found < 0:
            break
        _, _, header_size, entries_size = _HEADER.unpack_from(data, found)
        first, stop = found + header_size, found + header_size + entries_size
        if header_size < _HEADER.size or stop > end:
            raise FatbinError(f"the fat binary at offset {found} runs past its section")
        containers += 1
        entry = first
        while entry < stop:
            if entry + _ENTRY_MIN > stop:
                raise FatbinError(f"a truncated entry header at offset {entry}")
            kind, _, entry_header, payload = _ENTRY.unpack_from(data, entry)
            arch, = struct.unpack_from("<I", data, entry + _ARCH_OFFSET)
            if entry_header < _ENTRY_MIN or entry + entry_header + payload > stop:
                raise FatbinError(f"the entry at offset {entry} runs past its fat binary")
            if kind == KIND_SASS:
                sass.add(arch)
            elif kind == KIND_PTX:
                ptx.add(arch)
            entries += 1
            entry += entry_header + payload
        pos = stop
    return {"sass": sorted(sass), "ptx": sorted(ptx), "fatbins": containers, "entries": entries}


def read(path: Path) -> dict[str, Any]:
    """The record of one library: which architectures it carries SASS and PTX for."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        where = section(data)
        if where is None:
            raise FatbinError(f"{path} has no {SECTION.decode()} section: it carries no CUDA code")
        record = architectures(data, *where)
    if not record["sass"] and not record["ptx"]:
        raise FatbinError(f"{path}: no SASS or PTX found in its {SECTION.decode()} section")
    return {"library": str(path), **record}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: fatbin.py LIBRARY.so  (prints the JSON record of its GPU architectures)", file=sys.stderr)
        return 2
    try:
        record = read(Path(argv[0]))
    except (OSError, ValueError, FatbinError, struct.error) as e:
        print(f"fatbin.py: {argv[0]}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
