"""A file to invoke an endpoint with: its bytes and the Content-Type the image's server expects."""

from __future__ import annotations

from pathlib import Path

from mxnet_byoc.serve import mediatypes  # standard library only: no numpy in byoctl

# By file name extension, one for each request type the image's server accepts.
CONTENT_TYPES = {
    ".png": mediatypes.PNG,
    ".jpg": mediatypes.JPEG,
    ".jpeg": mediatypes.JPEG,
    ".npy": mediatypes.NPY,
    ".json": mediatypes.JSON,
    ".jsonl": mediatypes.JSONLINES,
    ".csv": mediatypes.CSV,
}
# SageMaker's limit for one real-time request.
MAX_REQUEST_BYTES = 6 * 1024 * 1024


class PayloadError(Exception):
    """The file cannot be sent as it is; the message says why."""


def read(path: Path, content_type: str | None = None) -> tuple[bytes, str]:
    """The body and Content-Type for `path`; `content_type` overrides the guess from the extension."""
    path = Path(path)
    if not path.is_file():
        raise PayloadError(f"{path} is not a file")
    if content_type is None:
        content_type = CONTENT_TYPES.get(path.suffix.lower())
        if content_type is None:
            known = ", ".join(sorted(CONTENT_TYPES))
            raise PayloadError(f"cannot tell the content type of {path.name}: use one of {known} "
                               f"or pass --content-type")
    body = path.read_bytes()
    if not body:
        raise PayloadError(f"{path} is empty")
    if len(body) > MAX_REQUEST_BYTES:
        raise PayloadError(f"{path} has {len(body)} bytes; a real-time request takes at most "
                           f"{MAX_REQUEST_BYTES} (6 MB): use `byoctl transform` for larger inputs")
    return body, content_type
