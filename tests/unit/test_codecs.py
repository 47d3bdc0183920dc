"""Request decoding and response encoding (numpy and orjson only: no MXNet, no server)."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys

import numpy as np
import orjson
import pytest

from devkit.bodies import npy
from mxnet_byoc.serve import codecs

SHAPE = (1, 28, 28)


def digits(n: int, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, size=(n, 28, 28)).astype(np.uint8)


def decode(body: bytes | str, content_type: str, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    return codecs.decode(body.encode() if isinstance(body, str) else body, content_type, shape)


def test_serving_imports_neither_mxnet_nor_training_nor_pillow():
    # Serving loads libmxnet.so through ctypes; no training module enters a serving process; Pillow waits for
    # the first picture (it would lengthen every start).
    code = (
        "import sys; import mxnet_byoc.serve.app, mxnet_byoc.serve.server; "
        "print(sorted(m for m in sys.modules if m in ('mxnet', 'PIL') or m.startswith(('mxnet.', 'PIL.', "
        "'mxnet_byoc.train'))))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("layout", ["nested", "flat", "channels"])
@pytest.mark.parametrize("key", ["instances", "inputs"])
def test_json_layouts_give_the_same_batch(layout, key):
    images = digits(3)
    instances = {
        "nested": images.tolist(),
        "flat": images.reshape(3, 784).tolist(),
        "channels": images.reshape(3, 1, 28, 28).tolist(),
    }[layout]
    batch = decode(json.dumps({key: instances}), "application/json")
    assert batch.dtype == np.float32 and batch.shape == (3, 1, 28, 28) and batch.flags.c_contiguous
    np.testing.assert_allclose(batch, images.reshape(3, 1, 28, 28) / 255, rtol=1e-6)


def test_json_content_type_parameters_and_case_are_ignored():
    image = digits(1)[0]
    batch = decode(json.dumps({"instances": [image.tolist()]}), "Application/JSON; charset=utf-8")
    assert batch.shape == (1, 1, 28, 28)
    np.testing.assert_allclose(batch[0, 0], image / 255, rtol=1e-6)


def test_json_image_nesting_is_free_as_long_as_it_holds_784_numbers():
    image = digits(1)[0]
    rows_of_56 = image.reshape(14, 56).tolist()
    batch = decode(json.dumps({"instances": [rows_of_56]}), "application/json")
    np.testing.assert_allclose(batch.ravel(), image.ravel() / 255, rtol=1e-6)


def test_json_instances_must_be_a_list_of_images():
    image = digits(1)[0]
    with pytest.raises(codecs.BadRequest, match="image 0 holds 28 values; expected 28x28"):
        decode(json.dumps({"instances": image.tolist()}), "application/json")


def test_pixel_rule_is_per_image():
    dark_255 = np.zeros((28, 28))
    dark_255[0, 0] = 2  # largest value above 1: read as 0-255
    unit = np.full((28, 28), 0.5)  # largest value 0.5: already in [0, 1]
    batch = decode(json.dumps({"instances": [dark_255.tolist(), unit.tolist()]}), "application/json")
    assert batch[0, 0, 0, 0] == pytest.approx(2 / 255)
    assert batch[1].max() == pytest.approx(0.5)


def test_binary_zero_one_image_is_read_as_unit_range():
    image = np.zeros((28, 28), dtype=int)
    image[10:20, 14] = 1
    batch = decode(json.dumps({"instances": [image.tolist()]}), "application/json")
    assert batch.max() == 1.0


@pytest.mark.parametrize(
    "values, message",
    [
        ([-1] + [0] * 783, "[0, 1] or [0, 255]"),
        ([256] + [0] * 783, "[0, 1] or [0, 255]"),
        ([None] + [0] * 783, "image 0 holds something other than numbers"),
        (["7"] + [0] * 783, "image 0 holds something other than numbers"),
        ([True] + [0] * 783, "image 0 holds something other than numbers"),
    ],
)
def test_out_of_range_and_missing_pixels_are_refused(values, message):
    with pytest.raises(codecs.BadRequest, match=message.replace("[", r"\[").replace("]", r"\]")):
        decode(json.dumps({"instances": [values]}), "application/json")


@pytest.mark.parametrize(
    "body, message",
    [
        ("{not json", "not valid JSON"),
        ('{"images": [[0]]}', '"instances"'),
        ("[[0, 1]]", '"instances"'),
        ('{"instances": []}', "no images"),
        ('{"instances": [[0, 1, 2]]}', r"image 0 holds 3 values; expected 28x28 or 784 values \(flat\) or 1x28x28"),
        ('{"instances": [' + json.dumps([0] * 784) + ', [0]]}', "image 1 holds 1 values"),
        ('{"instances": [["a", "b"]]}', "numbers"),
        ('{"instances": [7]}', "image 0 is not a list of pixel values"),
        ('{"instances": 7}', '"instances"'),
        (b"\xff\xfe", "not valid JSON"),
        ("", "empty"),
    ],
)
def test_malformed_json_says_what_to_fix(body, message):
    with pytest.raises(codecs.BadRequest, match=message) as caught:
        decode(body, "application/json")
    assert caught.value.status == 400


def test_csv_one_image_per_line_with_crlf_and_blank_lines():
    images = digits(2)
    text = "\r\n".join(",".join(map(str, image.ravel())) for image in images) + "\r\n\r\n"
    batch = decode(text, "text/csv")
    np.testing.assert_allclose(batch, images.reshape(2, 1, 28, 28) / 255, rtol=1e-6)


def test_csv_floats_in_unit_range():
    image = np.linspace(0, 1, 784)
    batch = decode(",".join(f"{v:.6f}" for v in image), "text/csv")
    np.testing.assert_allclose(batch.ravel(), image, atol=1e-6)


@pytest.mark.parametrize(
    "body, message",
    [
        ("1,2,3\n", "line 1 holds 3 values; expected 784"),
        (",".join(["0"] * 784) + "\n" + ",".join(["0"] * 783), "line 2 holds 783 values"),
        (",".join(["x"] * 784), "not a number"),
        ("\n\n", "no images"),
    ],
)
def test_malformed_csv_says_what_to_fix(body, message):
    with pytest.raises(codecs.BadRequest, match=message):
        decode(body, "text/csv")


@pytest.mark.parametrize(
    "shape", [(4, 28, 28), (4, 784), (4, 1, 28, 28), (28, 28), (784,), (1, 28, 28)]
)
@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.float64])
def test_npy_layouts_and_dtypes(shape, dtype):
    count = 4 if shape[0] == 4 else 1
    images = digits(count)
    batch = decode(npy(images.astype(dtype).reshape(shape)), "application/x-npy")
    assert batch.shape == (count, 1, 28, 28) and batch.dtype == np.float32
    np.testing.assert_allclose(batch, images.reshape(count, 1, 28, 28) / 255, rtol=1e-6)


def test_npy_float_unit_range_passes_unchanged():
    images = np.random.RandomState(1).rand(5, 1, 28, 28).astype(np.float32)
    np.testing.assert_array_equal(decode(npy(images), "application/x-npy"), images)


def test_npy_fortran_order_is_read_correctly():
    images = np.asfortranarray(digits(2).reshape(2, 784))
    batch = decode(npy(images), "application/x-npy")
    np.testing.assert_allclose(batch.reshape(2, 784), images / 255, rtol=1e-6)


def test_npy_is_never_unpickled():
    pickled = npy(np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(codecs.BadRequest, match="not a .npy array"):
        decode(pickled, "application/x-npy")


@pytest.mark.parametrize(
    "body, message",
    [
        (b"not an array", "not a .npy array"),
        (npy(np.zeros((2, 27, 27))), r"wrong shape \[2, 27, 27\]"),
        (npy(np.zeros((0, 784))), "no images"),
        (npy(np.array(["a"] * 784)), "not numeric"),
        (npy(np.zeros(784, dtype=complex)), "not numeric"),
    ],
)
def test_malformed_npy_says_what_to_fix(body, message):
    with pytest.raises(codecs.BadRequest, match=message):
        decode(body, "application/x-npy")


def test_npz_archive_is_refused():
    buffer = io.BytesIO()
    np.savez(buffer, x=np.zeros((1, 784)))
    with pytest.raises(codecs.BadRequest, match=".npz archive"):
        decode(buffer.getvalue(), "application/x-npy")


def test_jsonlines_one_instance_per_line_in_any_layout():
    images = digits(3)
    lines = [json.dumps(images[0].tolist()), "", json.dumps(images[1].ravel().tolist()),
             json.dumps({"instances": [images[2].tolist()]})]
    batch = decode("\n".join(lines) + "\n", "application/jsonlines")
    np.testing.assert_allclose(batch, images.reshape(3, 1, 28, 28) / 255, rtol=1e-6)


@pytest.mark.parametrize(
    "body, message",
    [(json.dumps([0] * 784) + "\n{oops", "line 2 is not valid JSON"), ('"text"', "line 1: expected one image"),
     ("\n", "no images"), (json.dumps([0] * 784) + "\n[0, 1, 2]", "image 1 holds 3 values")],
)
def test_malformed_jsonlines_says_what_to_fix(body, message):
    with pytest.raises(codecs.BadRequest, match=message):
        decode(body, "application/jsonlines")


@pytest.mark.parametrize("content_type", [None, "", "application/xml", "image/gif", "text/plain"])
def test_unsupported_content_type_is_415_listing_the_supported_ones(content_type):
    with pytest.raises(codecs.UnsupportedMediaType) as caught:
        decode(b"x", content_type)
    assert caught.value.status == 415
    for supported in codecs.REQUEST_TYPES:
        assert supported in str(caught.value)


def test_non_mnist_input_shape_comes_from_the_model():
    shape = (3, 8, 6)
    images = np.random.RandomState(2).rand(2, *shape).astype(np.float32)
    assert decode(npy(images.reshape(2, -1)), "application/x-npy", shape).shape == (2, 3, 8, 6)
    with pytest.raises(codecs.BadRequest, match=r"144 values \(flat\) or 3x8x6"):
        decode(npy(np.zeros((2, 8, 6))), "application/x-npy", shape)


@pytest.mark.parametrize(
    "accept, expected",
    [
        (None, "application/json"),
        ("", "application/json"),
        ("*/*", "application/json"),
        ("application/json", "application/json"),
        ("text/csv", "text/csv"),
        ("text/csv; charset=utf-8", "text/csv"),
        ("application/jsonlines", "application/jsonlines"),
        ("text/*", "text/csv"),
        ("application/*", "application/json"),
        ("image/png, text/csv;q=0.5", "text/csv"),
        ("application/json;q=0.2, text/csv;q=0.9", "text/csv"),
        ("text/csv;q=0, */*;q=0.1", "application/json"),
        ("TEXT/CSV", "text/csv"),
    ],
)
def test_accept_negotiation(accept, expected):
    assert codecs.negotiate(accept) == expected


def test_default_accept_is_used_for_wildcards():
    assert codecs.negotiate("*/*", "text/csv") == "text/csv"
    assert codecs.negotiate(None, "application/jsonlines") == "application/jsonlines"
    assert codecs.negotiate("application/*", "application/jsonlines") == "application/jsonlines"


@pytest.mark.parametrize("accept", ["application/xml", "image/png", "text/csv;q=0", "text/html, image/*"])
def test_unsupported_accept_is_406_listing_the_supported_ones(accept):
    with pytest.raises(codecs.NotAcceptable) as caught:
        codecs.negotiate(accept)
    assert caught.value.status == 406
    for supported in codecs.RESPONSE_TYPES:
        assert supported in str(caught.value)


PROBABILITIES = np.array([[0.1, 0.7, 0.2], [0.6, 0.3, 0.1]], dtype=np.float32)


def test_encode_json():
    document = orjson.loads(codecs.encode(PROBABILITIES, ["a", "b", "c"], "application/json"))
    assert [p["label"] for p in document["predictions"]] == ["b", "a"]
    np.testing.assert_allclose([p["probabilities"] for p in document["predictions"]], PROBABILITIES)


def test_encode_jsonlines_one_object_per_line():
    body = codecs.encode(PROBABILITIES, [0, 1, 2], "application/jsonlines")
    lines = body.decode().splitlines()
    assert body.endswith(b"\n") and len(lines) == 2
    assert [json.loads(line)["label"] for line in lines] == [1, 0]
    assert len(json.loads(lines[0])["probabilities"]) == 3


def test_encode_csv_one_label_per_line_quoting_when_needed():
    assert codecs.encode(PROBABILITIES, [0, 1, 2], "text/csv") == b"1\n0\n"
    assert codecs.encode(PROBABILITIES, ["x", 'say "b", ok', "z"], "text/csv") == b'"say ""b"", ok"\nx\n'


def plain_encoding(probabilities: np.ndarray, classes: list, kind: str) -> bytes:
    """The response bodies written the obvious way: one object per image, dumped by orjson."""
    rows = [{"label": classes[i], "probabilities": row} for i, row in zip(probabilities.argmax(axis=1), probabilities)]
    if kind == "text/csv":
        return "".join(f"{codecs._csv_field(classes[i])}\n" for i in probabilities.argmax(axis=1)).encode()
    if kind == "application/jsonlines":
        return b"".join(orjson.dumps(r, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE) for r in rows)
    return orjson.dumps({"predictions": rows}, option=orjson.OPT_SERIALIZE_NUMPY)


@pytest.mark.parametrize("kind", ["application/json", "application/jsonlines", "text/csv"])
@pytest.mark.parametrize("count", [1, 2, 1000])
@pytest.mark.parametrize("classes", [list(range(10)), [f'say "{i}", ok' for i in range(10)],
                                     [{"id": i} for i in range(10)]])
def test_spliced_encoding_gives_the_bytes_of_the_plain_one(kind, count, classes):
    # encode() splices one orjson dump of the whole array between per-class prefixes: it must give
    # exactly what dumping one object per image gives, for any labels and for NaN (null) too.
    probabilities = np.random.RandomState(count).dirichlet(np.ones(10), size=count).astype(np.float32)
    probabilities[0, 4] = np.nan
    probabilities[-1] = [0, 1e-38, 1, 0, 0, 0, 0, 0, 0, 3.4e38]
    assert codecs.encode(probabilities, classes, kind) == plain_encoding(probabilities, classes, kind)
    assert codecs.encode(probabilities, classes, kind) == plain_encoding(probabilities, classes, kind)  # cached


def test_encoding_no_images():
    empty = np.zeros((0, 3), dtype=np.float32)
    assert orjson.loads(codecs.encode(empty, [0, 1, 2], "application/json")) == {"predictions": []}
    assert codecs.encode(empty, [0, 1, 2], "application/jsonlines") == b""
    assert codecs.encode(empty, [0, 1, 2], "text/csv") == b""


def test_npy_headers_are_parsed_once_and_bad_ones_every_time():
    codecs._cached_npy_header.cache_clear()
    for seed in range(3):
        batch = decode(npy(digits(5, seed)), "application/x-npy")
        np.testing.assert_array_equal(batch[:, 0], digits(5, seed) / np.float32(255))
    assert codecs._cached_npy_header.cache_info().hits == 2 and codecs._cached_npy_header.cache_info().misses == 1
    bad = npy(digits(1)).replace(b"'shape': (1, 28, 28)", b"'shape': (1, 28, 2x)")
    for _ in range(2):
        with pytest.raises(codecs.BadRequest, match="not a .npy array"):
            decode(bad, "application/x-npy")
    assert codecs._cached_npy_header.cache_info().currsize == 1
    # A header longer than the cache takes is read every time, with the same result.
    text = ("{'descr': '|u1', 'fortran_order': False, 'shape': (2, 784), }"
            + " " * codecs.NPY_CACHED_HEADER_BYTES + "\n").encode()
    body = b"\x93NUMPY\x02\x00" + len(text).to_bytes(4, "little") + text + digits(2).tobytes()
    np.testing.assert_array_equal(decode(body, "application/x-npy").reshape(2, 28, 28), digits(2) / np.float32(255))
    assert codecs._cached_npy_header.cache_info().currsize == 1


@pytest.mark.parametrize("count", [1, 3])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -0.5, 300.0])
def test_nan_infinity_and_out_of_range_floats_are_refused_naming_the_image(count, bad):
    images = np.zeros((count, 28, 28), dtype=np.float32)
    images[-1, 3, 3] = bad
    with pytest.raises(codecs.BadRequest, match=f"image {count - 1}: pixel values must lie in"):
        decode(npy(images), "application/x-npy")


def test_uint8_batches_scale_per_image():
    images = digits(3)
    images[1] = np.minimum(images[1], 1)  # an image of 0s and 1s: read as black and white
    batch = decode(npy(images), "application/x-npy")
    np.testing.assert_allclose(batch[0, 0], images[0] / 255, rtol=1e-6)
    np.testing.assert_array_equal(batch[1, 0], images[1].astype(np.float32))
    assert batch.dtype == np.float32 and batch.flags.c_contiguous


def test_npy_truncated_data_is_refused():
    body = npy(digits(2))
    with pytest.raises(codecs.BadRequest, match="shorter than"):
        decode(body[:-10], "application/x-npy")


def test_npy_big_endian_and_format_2_arrays_are_read():
    images = digits(2)
    big_endian = images.astype(">f4") / 255
    np.testing.assert_allclose(decode(npy(big_endian), "application/x-npy").reshape(2, 28, 28), images / 255,
                               rtol=1e-6)
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, images, version=(2, 0))
    np.testing.assert_allclose(decode(buffer.getvalue(), "application/x-npy").reshape(2, 28, 28), images / 255,
                               rtol=1e-6)


def test_running_out_of_memory_is_not_a_client_error(monkeypatch):
    def no_memory(stream):
        raise MemoryError

    monkeypatch.setattr(np.lib.format, "read_array_header_1_0", no_memory)
    codecs._cached_npy_header.cache_clear()
    with pytest.raises(MemoryError):
        decode(npy(digits(1)[0]), "application/x-npy")


def test_npy_format_3_is_read_without_allocating_its_declared_shape():
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, digits(2), version=(3, 0))
    np.testing.assert_allclose(decode(buffer.getvalue(), "application/x-npy"), digits(2)[:, None] / 255, rtol=1e-6)
    huge = buffer.getvalue().replace(b"(2, 28, 28)", b"(99999999999, 28, 28)")
    with pytest.raises(codecs.BadRequest, match="its data is shorter than"):
        decode(huge, "application/x-npy")


@pytest.mark.parametrize("array", [
    digits(3), digits(1)[0], digits(2).astype(">f4") / 255, np.asfortranarray(digits(2).astype(np.float64)),
    digits(2).reshape(2, 784).astype(np.int16), np.zeros((0, 784), np.uint8),
], ids=["uint8", "one image", "big-endian", "fortran order", "int16", "empty"])
@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_npy_bodies_read_with_a_cached_header_give_what_numpy_load_gives(array, version):
    # _npy_array (a view on the body, its header parsed once per distinct header) against numpy's own reader.
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, version=version)
    for _ in range(2):  # parsed, then from the cache
        found = codecs._npy_array(buffer.getvalue())
        expected = np.load(io.BytesIO(buffer.getvalue()), allow_pickle=False)
        assert found.dtype == expected.dtype and found.shape == expected.shape
        np.testing.assert_array_equal(found, expected)


@pytest.mark.parametrize("image", [
    digits(1), digits(1) / 255, np.minimum(digits(1), 1), np.zeros((1, 28, 28), np.int64),
    digits(1).astype(np.float64) * 300, -digits(1).astype(np.float32), np.full((1, 28, 28), np.nan, np.float32),
], ids=["0-255", "0-1", "black and white", "all zero", "above 255", "negative", "NaN"])
def test_one_image_is_scaled_as_a_batch_would_be(image):
    # _one_to_unit_range is a fast path for one image: the same array, or the same refusal, as the general path.
    batch = image.reshape(1, 1, 28, 28)
    try:
        expected = codecs._each_to_unit_range(batch)
    except codecs.BadRequest as e:
        with pytest.raises(codecs.BadRequest, match=re.escape(str(e))):
            codecs._one_to_unit_range(batch)
        return
    found = codecs._one_to_unit_range(batch)
    assert found.dtype == expected.dtype == np.float32 and found.flags.c_contiguous
    np.testing.assert_array_equal(found, expected)
