"""A user's training code as the SageMaker SDK ships it (script mode): files at the top of a gzipped
tarball, sourcedir.tar.gz, which the job downloads from S3."""

from __future__ import annotations

import io
import tarfile
import textwrap
from collections.abc import Mapping


def tarball(files: Mapping[str, str]) -> bytes:
    """sourcedir.tar.gz holding `files` (name -> text, dedented)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, text in files.items():
            data = textwrap.dedent(text).encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
