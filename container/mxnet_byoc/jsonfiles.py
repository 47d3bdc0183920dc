"""Reading the JSON files the container is handed: SageMaker's config files and a model directory's metadata.

One reader, so that every such file fails with the same kind of reason: which file, in which folder, and why.
Only the standard library: training reads its config and serving its metadata before importing MXNet.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import ReasonError


def read_json(path: Path, error: type[ReasonError]) -> Any:
    """The JSON value `path` holds; `error` (the caller's kind of failure) when it cannot be read or parsed."""
    path = Path(path)
    try:
        with open(path) as f:
            return json.load(f)
    except OSError as e:
        raise error(f"cannot read {path.name} in {path.parent}: {e.strerror or e}") from e
    except ValueError as e:
        raise error(f"cannot read {path.name} in {path.parent}: not valid JSON ({e})") from e
