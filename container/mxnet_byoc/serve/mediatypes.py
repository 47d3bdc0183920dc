"""The media types the built-in model serves, in one place: the codecs, the settings' checks and byoctl (which
must not import numpy) read them from here. Standard library only."""

from __future__ import annotations

JSON = "application/json"
JSONLINES = "application/jsonlines"
CSV = "text/csv"
NPY = "application/x-npy"
PNG = "image/png"
JPEG = "image/jpeg"

REQUEST_TYPES = (JSON, JSONLINES, CSV, NPY, PNG, JPEG)
RESPONSE_TYPES = (JSON, JSONLINES, CSV)


def media_type(header: str | None) -> str:
    """`text/csv; charset=utf-8` -> `text/csv` (lower case, parameters dropped)."""
    if not header:
        return ""
    return header.split(";", 1)[0].strip().lower()


def is_concrete(kind: str) -> bool:
    """`type/subtype` without wildcards: a type an answer can have."""
    main, slash, sub = kind.partition("/")
    return bool(slash and main and sub and "*" not in kind and " " not in kind)
