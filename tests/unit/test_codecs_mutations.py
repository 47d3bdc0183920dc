"""Mutated request bodies through the decoders: whatever the bytes, the only error is a ClientMistake (a 4xx
with a message), never another exception (a 500). Seeded, so a failure reproduces; the cases that escaped
before (a DEPTH_ERROR, zip and tokenize errors, MemoryError, an itemsize of 0, True as a dimension) came
from mutations like these."""

from __future__ import annotations

import io
import json
import random

import numpy as np
import pytest

from mxnet_byoc.serve import codecs, http_errors

SHAPE = (1, 28, 28)
MUTATIONS = 3000
TOKENS = [b"(", b")", b"[", b"]", b"{", b"}", b",", b"'", b'"', b"-", b"\\", b"\n", b"\r\n", b"\0", b"\xff",
          b"True", b"None", b"NaN", b"1e999", b"9999999999", b"0", b"<", b"O", b"V", b"U", b"M8", b"c16", b"(2,)"]


def npy_seeds() -> list[bytes]:
    seeds = []
    for dtype in ("u1", "<f4", ">f8", "<i2"):
        for version in ((1, 0), (2, 0), (3, 0)):
            for shape in ((2, 28, 28), (784,), (1, 1, 28, 28)):
                buffer = io.BytesIO()
                np.lib.format.write_array(buffer, np.zeros(shape, dtype), version=version)
                seeds.append(buffer.getvalue())
    return seeds


def text_seeds() -> dict[str, list[bytes]]:
    images = np.random.default_rng(0).integers(0, 256, (2, 28, 28)).tolist()
    flat = [[v for row in image for v in row] for image in images]
    return {
        codecs.JSON: [json.dumps({"instances": images}).encode(), json.dumps({"inputs": flat}).encode()],
        codecs.JSONLINES: [b"\n".join(json.dumps(image).encode() for image in flat),
                           json.dumps({"instances": images}).encode()],
        codecs.CSV: [b"\n".join(",".join(map(str, image)).encode() for image in flat)],
    }


def mutate(rng: random.Random, body: bytes, hot: int) -> bytes:
    """A few random edits, most of them in the first `hot` bytes (where headers and structure are)."""
    data = bytearray(body)
    for _ in range(rng.randint(1, 6)):
        if len(data) < 2:
            data = bytearray(body[:8])
        pos = rng.randrange(min(len(data), hot)) if rng.random() < 0.8 else rng.randrange(len(data))
        choice = rng.random()
        if choice < 0.35:
            data[pos] = rng.randrange(256)
        elif choice < 0.6:
            data[pos:pos] = rng.choice(TOKENS)
        elif choice < 0.85:
            del data[pos:pos + rng.randint(1, 10)]
        else:
            data = data[:pos]
    return bytes(data)


def only_codec_errors(content_type: str, seeds: list[bytes], hot: int, seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(MUTATIONS):
        body = mutate(rng, rng.choice(seeds), hot)
        try:
            codecs.decode(body, content_type, SHAPE)
        except http_errors.ClientMistake:
            pass
        except Exception as e:  # what the server would answer with 500
            pytest.fail(f"{type(e).__name__}: {e} for a {content_type} body starting {body[:200]!r}")


def test_mutated_npy_bodies_give_only_codec_errors():
    only_codec_errors(codecs.NPY, npy_seeds(), hot=140, seed=1)


@pytest.mark.parametrize("content_type", [codecs.JSON, codecs.JSONLINES, codecs.CSV])
def test_mutated_text_bodies_give_only_codec_errors(content_type):
    only_codec_errors(content_type, text_seeds()[content_type], hot=1 << 30, seed=2)
