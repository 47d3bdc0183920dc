"""Request bodies to image arrays, class probabilities to response bodies (numpy, simdjson, orjson; never MXNet).

Every decoder returns float32 pixels shaped (N, C, H, W) in [0, 1], the model's input; every client
mistake raises an `http_errors.ClientMistake` whose status and message tell the client what to fix.

The pixel rule, the same for every content type: each image on its own is read as 0-255 when its
largest value is above 1 (then divided by 255), and as 0-1 otherwise. Values outside [0, 255], NaN
and infinities are refused.
"""

from __future__ import annotations

import functools
import io
import itertools
import math
import tokenize
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import orjson
import simdjson

from .http_errors import BadRequest, NotAcceptable, UnsupportedMediaType
from .mediatypes import CSV, JPEG, JSON, JSONLINES, NPY, PNG, REQUEST_TYPES, RESPONSE_TYPES, media_type

JSON_KEYS = ("instances", "inputs")

_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def decode(body: bytes, content_type: str | None, input_shape: tuple[int, ...]) -> np.ndarray:
    """The images of a request body as float32 (N, C, H, W) in [0, 1] for a model taking (C, H, W)."""
    kind = media_type(content_type)
    decoder = _DECODERS.get(kind)
    if decoder is None:
        given = f"Content-Type {content_type!r}" if content_type else "no Content-Type"
        raise UnsupportedMediaType(f"{given} is not supported; send one of: {', '.join(REQUEST_TYPES)}")
    if not body:
        raise BadRequest(f"the {kind} body is empty")
    return decoder(body, tuple(input_shape))


def negotiate(accept: str | None, default: str = JSON, offered: tuple[str, ...] = RESPONSE_TYPES) -> str:
    """The response type for an Accept header: the `offered` type with the highest q, `default` for */*."""
    if not accept or not accept.strip():
        return default
    ranked = []
    for position, part in enumerate(accept.split(",")):
        kind, *params = (field.strip() for field in part.split(";"))
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if kind and quality > 0:
            ranked.append((-quality, position, kind.lower()))
    for _, _, kind in sorted(ranked):
        if kind in offered:
            return kind
        if kind == "*/*":
            return default
        if kind.endswith("/*"):
            family = kind[:-1]
            for candidate in (default, *offered):
                if candidate.startswith(family):
                    return candidate
    raise NotAcceptable(f"cannot answer Accept {accept!r}; supported: {', '.join(offered)}")


def encode(probabilities: np.ndarray, classes: Sequence[Any], kind: str) -> bytes:
    """The response body for (N, K) probabilities in the negotiated `kind`."""
    indices = probabilities.argmax(axis=1).tolist()
    if not indices:
        return b'{"predictions":[]}' if kind == JSON else b""
    pieces = _label_pieces(orjson.dumps(list(classes)), kind)  # the classes' JSON text: hashable, a cache key
    if kind == CSV:
        return b"".join([pieces[i] for i in indices])
    # orjson writes the whole (N, K) array in one call; its rows are then spliced between per-class
    # prefixes. The bytes are those of dumping a list of {"label", "probabilities"} objects, which costs a
    # batch far more (serve_bench.py --mode fastpath, row "answer spliced from one dump"); for one image both
    # cost the same.
    rows = orjson.dumps(np.ascontiguousarray(probabilities), option=_DUMPS_OPTIONS)[2:-2].split(b"],[")
    first, rest = pieces
    prefixes = [rest[i] for i in indices]
    prefixes[0] = first[indices[0]]
    body = b"".join(itertools.chain.from_iterable(zip(prefixes, rows)))
    return body + b"]}\n" if kind == JSONLINES else b'{"predictions":[' + body + b"]}]}"


@functools.lru_cache(maxsize=16)
def _label_pieces(classes_json: bytes, kind: str) -> Any:
    """Per class: its CSV line, or the JSON text that opens an image's object (and closes the one before)."""
    classes = orjson.loads(classes_json)
    if kind == CSV:
        return [(_csv_field(label) + "\n").encode() for label in classes]
    opening = [b'{"label":' + orjson.dumps(label) + b',"probabilities":[' for label in classes]
    between = b"]}\n" if kind == JSONLINES else b"]},"
    return opening, [between + text for text in opening]


def utf8_text(body: bytes, kind: str, encoding: str = "utf-8") -> str:
    """A `kind` body as text (`encoding`: "utf-8-sig" drops a byte-order mark); BadRequest when it is not UTF-8."""
    try:
        return str(body, encoding)
    except UnicodeDecodeError as e:
        raise BadRequest(f"the {kind} body is not UTF-8: {e}") from None


def describe_shapes(input_shape: tuple[int, ...]) -> str:
    """The image layouts a model taking (C, H, W) accepts, in words, for error messages and docs."""
    return " or ".join(_layout_names(input_shape))


def _csv_field(label: Any) -> str:
    text = str(label)
    if any(c in text for c in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def _layouts(input_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    channels, height, width = input_shape
    layouts = [(height, width)] if channels == 1 else []
    return layouts + [(math.prod(input_shape),), tuple(input_shape)]


def _layout_names(input_shape: tuple[int, ...]) -> list[str]:
    names = []
    for layout in _layouts(input_shape):
        names.append(f"{layout[0]} values (flat)" if len(layout) == 1 else "x".join(map(str, layout)))
    return names


def _to_batch(array: np.ndarray, input_shape: tuple[int, ...], single: bool = True) -> np.ndarray:
    """(N, C, H, W) from any accepted layout; with `single`, one image without the batch axis too."""
    layouts = _layouts(input_shape)
    if single and array.shape in layouts:
        return array.reshape(1, *input_shape)
    if array.ndim >= 2 and array.shape[1:] in layouts:
        if array.shape[0] == 0:
            raise BadRequest("the request holds no images")
        return array.reshape(array.shape[0], *input_shape)
    if array.size == 0:
        raise BadRequest("the request holds no images")
    raise BadRequest(
        f"wrong shape {list(array.shape)}: expected each image as {describe_shapes(input_shape)}, "
        f"one image or a list of images"
    )


def _to_unit_range(batch: np.ndarray) -> np.ndarray:
    """float32, C-contiguous, each image scaled to [0, 1] by the pixel rule."""
    if batch.dtype.kind not in "uif":
        raise BadRequest(f"pixel values must be numbers, not {batch.dtype}")
    if batch.shape[0] == 1:
        return _one_to_unit_range(batch)
    return _each_to_unit_range(batch)


def _one_to_unit_range(batch: np.ndarray) -> np.ndarray:
    """`_each_to_unit_range` for one image, in three numpy calls instead of ten, its bounds compared as Python
    floats (a comparison of numpy scalars costs more than the float conversions). Why: the one-image request
    is where numpy's per-call cost weighs most (serve_bench.py --mode fastpath, row "one image scaled in 3
    numpy calls")."""
    top, bottom = batch.max(), batch.min()
    high, low = float(top), float(bottom)
    if not (low >= 0 and high <= 255):  # written so that NaN fails too
        raise _out_of_range(0, bottom, top)
    if high > 1:
        return np.divide(batch, np.float32(255), dtype=np.float32)
    return np.ascontiguousarray(batch, dtype=np.float32)


def _each_to_unit_range(batch: np.ndarray) -> np.ndarray:
    flat = batch.reshape(batch.shape[0], -1)
    highest, lowest = flat.max(axis=1), flat.min(axis=1)
    if not (lowest.min() >= 0 and highest.max() <= 255):  # written so that NaN fails too
        bad = int(np.flatnonzero(~((lowest >= 0) & (highest <= 255)))[0])
        raise _out_of_range(bad, lowest[bad], highest[bad])
    on_255 = highest > 1
    if on_255.all():
        # Converts and scales in one pass; x / 255 in float32, as training scales its uint8 pixels.
        return np.divide(batch, np.float32(255), dtype=np.float32)
    if not on_255.any():
        return np.ascontiguousarray(batch, dtype=np.float32)
    batch = np.array(batch, dtype=np.float32, order="C")  # a copy of our own, scaled in place
    batch[on_255] /= np.float32(255)
    return batch


def _out_of_range(index: int, lowest: Any, highest: Any) -> BadRequest:
    return BadRequest(
        f"image {index}: pixel values must lie in [0, 1] or [0, 255]; found values from {lowest} to {highest}"
    )


def _parse_json(text: bytes, what: str) -> Any:
    # A fresh parser per document: a parser must not be reused while values of its last document live.
    try:
        return simdjson.Parser().parse(text)
    except (ValueError, RuntimeError) as e:  # UnicodeDecodeError included; simdjson's DEPTH_ERROR is a RuntimeError
        raise BadRequest(f"{what} is not valid JSON: {e}") from None


def _json_images(document: Any) -> Any:
    if isinstance(document, simdjson.Object):
        for key in JSON_KEYS:
            if key in document:
                return document[key]
    return None


def _pixels(image: Any, index: int, input_shape: tuple[int, ...]) -> np.ndarray:
    """One image's values, flattened; its nesting is free as long as it holds C*H*W numbers."""
    if not isinstance(image, simdjson.Array):
        raise BadRequest(f"image {index} is not a list of pixel values; expected {describe_shapes(input_shape)}")
    try:
        # simdjson copies the numbers straight into a buffer: no Python object per pixel.
        values = np.frombuffer(image.as_buffer(of_type="d"), dtype=np.float64)
    except (TypeError, ValueError):
        raise BadRequest(f"image {index} holds something other than numbers") from None
    if values.size != math.prod(input_shape):
        raise BadRequest(
            f"image {index} holds {values.size} values; expected {describe_shapes(input_shape)}"
        )
    return values


def _stack(images_: list[Any], input_shape: tuple[int, ...], first_index: int = 0) -> np.ndarray:
    batch = np.empty((len(images_), math.prod(input_shape)), dtype=np.float32)
    for offset, image in enumerate(images_):
        batch[offset] = _pixels(image, first_index + offset, input_shape)
    return batch


def _decode_json(body: bytes, input_shape: tuple[int, ...]) -> np.ndarray:
    images_ = _json_images(_parse_json(body, "the application/json body"))
    if not isinstance(images_, simdjson.Array):
        raise BadRequest('expected a JSON object {"instances": [image, ...]} (or "inputs" in place of "instances")')
    if len(images_) == 0:
        raise BadRequest("the request holds no images")
    return _to_unit_range(_stack(images_, input_shape).reshape(len(images_), *input_shape))


def _decode_jsonlines(body: bytes, input_shape: tuple[int, ...]) -> np.ndarray:
    rows = []
    for number, line in enumerate(body.splitlines(), 1):
        if not line.strip():
            continue
        document = _parse_json(line, f"line {number}")
        if isinstance(document, simdjson.Array):
            rows.append(_pixels(document, len(rows), input_shape))
            continue
        images_ = _json_images(document)
        if not isinstance(images_, simdjson.Array):
            raise BadRequest(
                f'line {number}: expected one image (a list of pixel values) or {{"instances": [image, ...]}}'
            )
        rows.extend(_stack(images_, input_shape, len(rows)))
    if not rows:
        raise BadRequest("the application/jsonlines body holds no images")
    return _to_unit_range(np.array(rows, dtype=np.float32).reshape(len(rows), *input_shape))


def _decode_csv(body: bytes, input_shape: tuple[int, ...]) -> np.ndarray:
    text = utf8_text(body, CSV, "utf-8-sig")
    per_image = math.prod(input_shape)
    lines = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        count = line.count(",") + 1
        if count != per_image:
            raise BadRequest(
                f"line {number} holds {count} values; expected {per_image} per line "
                f"(one {'x'.join(map(str, input_shape))} image, flattened)"
            )
        lines.append(line)
    if not lines:
        raise BadRequest("the text/csv body holds no images")
    try:
        values = np.array(",".join(lines).split(","), dtype=np.float32)
    except ValueError as e:
        raise BadRequest(f"the text/csv body holds a value that is not a number: {e}") from None
    return _to_unit_range(values.reshape(len(lines), *input_shape))


def _decode_npy(body: bytes, input_shape: tuple[int, ...]) -> np.ndarray:
    array = _npy_array(body)
    if array.dtype.kind not in "uif":
        raise BadRequest(f"the array's dtype {array.dtype} is not numeric; send integers or floats")
    return _to_unit_range(_to_batch(array, input_shape))


def _npy_array(body: bytes) -> np.ndarray:
    """The array of a .npy body as a view on the body (numpy.load would copy it twice); never unpickled."""
    if body[:4] == b"PK\x03\x04":
        raise BadRequest("the application/x-npy body is an .npz archive; send one .npy array (numpy.save)")
    end = _npy_header_end(body)
    if end is not None and end <= NPY_CACHED_HEADER_BYTES:
        shape, fortran_order, dtype = _cached_npy_header(bytes(body[:end]))
    else:
        stream = io.BytesIO(body)
        shape, fortran_order, dtype = _read_npy_header(stream)
        end = stream.tell()
    count = math.prod(shape)
    if len(body) - end < count * dtype.itemsize:
        raise BadRequest(f"the application/x-npy body is not a .npy array: its data is shorter than {list(shape)} "
                         f"{dtype} needs")
    try:
        array = np.frombuffer(body, dtype=dtype, count=count, offset=end)
        return array.reshape(shape, order="F" if fortran_order else "C")
    except (ValueError, TypeError) as e:  # a dtype of itemsize 0; True as a dimension
        raise BadRequest(f"the application/x-npy body is not a .npy array: {e}") from None


NPY_CACHED_HEADER_BYTES = 4096  # numpy.save writes 128 bytes; a longer header is parsed each time, never kept
_NPY_LENGTH_BYTES = {b"\x01\x00": 2, b"\x02\x00": 4, b"\x03\x00": 4}  # format version -> bytes of the header's length


def _npy_header_end(body: bytes) -> int | None:
    """Where the data of a format 1.0, 2.0 or 3.0 .npy body starts, by its header's length; None otherwise."""
    width = _NPY_LENGTH_BYTES.get(bytes(body[6:8]))
    if width is None or body[:6] != b"\x93NUMPY":
        return None
    return 8 + width + int.from_bytes(body[8:8 + width], "little")


@functools.lru_cache(maxsize=64)
def _cached_npy_header(header: bytes) -> tuple[tuple[int, ...], bool, np.dtype]:
    """`_read_npy_header`, cached by the header's bytes. Why: numpy parses the header's Python literal with its
    tokenizer, a large part of a one-image .npy request (serve_bench.py --mode fastpath, row ".npy header parsed
    once per distinct header"), and a client sends the same header again and again. Headers that fail are not cached
    (lru_cache keeps no exceptions)."""
    return _read_npy_header(io.BytesIO(header))


def _read_npy_header(stream: io.BytesIO) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Shape, order and dtype of a .npy stream, which is left at the data.

    Format 3.0 differs from 2.0 only in reading the header as UTF-8 rather than Latin-1, which matters only
    for the field names of structured dtypes, which are refused anyway: 2.0's reader takes both, and
    numpy.load (which allocates the declared shape before reading the data) is never needed.
    """
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version in ((2, 0), (3, 0)):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"format version {version[0]}.{version[1]} is not one numpy writes")
    except (ValueError, SyntaxError, tokenize.TokenError) as e:  # what numpy raises for bytes it cannot read
        # (its literal parser: SyntaxError; tokenize.TokenError for a header cut mid-token)
        raise BadRequest(f"the application/x-npy body is not a .npy array: {e or type(e).__name__}") from None
    if any(size < 0 for size in shape):
        raise BadRequest(f"the application/x-npy body is not a .npy array: its shape {list(shape)} is negative")
    if dtype.hasobject:
        raise BadRequest("the application/x-npy body is not a .npy array of numbers (objects are never unpickled)")
    return shape, fortran_order, dtype


def _decode_image(body: bytes, input_shape: tuple[int, ...]) -> np.ndarray:
    # Imported at the first picture: Pillow's import would lengthen serve's start before the workers fork
    # (python -X importtime shows it), for a content type few endpoints see.
    from . import pictures

    try:
        picture = pictures.to_model_input(body, input_shape)
    except pictures.ImageError as e:
        raise BadRequest(str(e)) from None
    return picture[np.newaxis]


_DECODERS: dict[str, Callable[[bytes, tuple[int, ...]], np.ndarray]] = {
    JSON: _decode_json,
    JSONLINES: _decode_jsonlines,
    CSV: _decode_csv,
    NPY: _decode_npy,
    PNG: _decode_image,
    JPEG: _decode_image,
}
