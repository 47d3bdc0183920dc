"""The built-in model as a `Handler`: the request's images through the codecs and the network loaded with
MXNet's C predict API, the probabilities back in the negotiated type."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from . import codecs, device, network
from .handler import Load, require_default_accept
from .mediatypes import CSV, JSON, JSONLINES

CONTENT_TYPES = {JSON: JSON, JSONLINES: JSONLINES, CSV: f"{CSV}; charset=utf-8"}


class DigitHandler:
    def __init__(self, model: network.Model, default_accept: str = JSON):
        self.model = model
        self.default_accept = default_accept  # the answer to */* or no Accept

    def invoke(self, body: bytes, content_type: str | None, accept: str | None,
               headers: Mapping[str, str] | None = None) -> tuple[bytes, str]:
        kind = codecs.negotiate(accept, self.default_accept)  # 406 before any work on the body
        batch = codecs.decode(body, content_type, self.model.input_shape)
        return codecs.encode(self.model.predict(batch), self.model.classes, kind), CONTENT_TYPES[kind]

    def close(self) -> None:
        self.model.close()

    def __str__(self) -> str:
        return f"input {list(self.model.input_shape)}, {self.model.num_classes} classes"


def loader(default_accept: str = JSON) -> Load:
    """Loads and warms up the model of a directory (network.load) into a DigitHandler, on this worker's
    device (the GPU when there is one)."""

    def load(model_dir: Path) -> DigitHandler:
        require_default_accept(default_accept, tuple(CONTENT_TYPES), "the built-in model answers")
        return DigitHandler(network.load(model_dir, device.current()), default_accept)

    return load
