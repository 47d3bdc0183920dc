"""Pictures of digits brought to MNIST's form (Pillow and numpy; no MXNet)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from mxnet_byoc.serve import pictures
from mxnet_byoc.train import data

SHAPE = (1, 28, 28)


@pytest.fixture(scope="module")
def digits(mnist_dir) -> np.ndarray:
    return data.read_idx(mnist_dir / "t10k-images-idx3-ubyte.gz")[:50].reshape(50, 28, 28)


def encode(array: np.ndarray, mode: str = "L", fmt: str = "PNG", **save) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).convert(mode).save(buffer, fmt, **save)
    return buffer.getvalue()


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def photo_of(digit: np.ndarray, scale: int = 7, margin: int = 40) -> np.ndarray:
    """Dark ink on white paper, larger than MNIST and off centre."""
    big = np.asarray(Image.fromarray(255 - digit).resize((28 * scale, 28 * scale), Image.Resampling.BILINEAR))
    return np.pad(big, ((margin, 2 * margin), (3 * margin, margin)), constant_values=255)


def test_an_mnist_digit_comes_out_as_it_went_in(digits):
    for digit in digits:
        out = pictures.to_model_input(encode(digit), SHAPE)
        assert out.shape == SHAPE and out.dtype == np.float32
        assert 0 <= out.min() and out.max() <= 1
        assert np.abs(out[0] - digit / 255).mean() < 0.01


def test_large_dark_on_light_colour_photo_matches_the_digit(digits):
    scores = []
    for digit in digits[:20]:
        out = pictures.to_model_input(encode(photo_of(digit), "RGB"), SHAPE)
        scores.append(correlation(out[0], digit))
    assert np.median(scores) > 0.9


def test_jpeg_is_read_like_png(digits):
    digit = digits[0]
    out = pictures.to_model_input(encode(photo_of(digit), "RGB", "JPEG", quality=90), SHAPE)
    assert correlation(out[0], digit) > 0.85


def test_ink_on_a_transparent_canvas(digits):
    digit = digits[1]
    for ink in (0, 255):  # black or white strokes; the canvas is transparent black, as drawing apps save it
        rgba = np.zeros((28 * 4, 28 * 4, 4), dtype=np.uint8)
        rgba[..., :3] = ink
        rgba[..., 3] = np.asarray(Image.fromarray(digit).resize((28 * 4, 28 * 4), Image.Resampling.BILINEAR))
        out = pictures.to_model_input(encode(rgba, "RGBA"), SHAPE)
        assert correlation(out[0], digit) > 0.9, ink


def test_exif_orientation_is_applied(digits):
    digit = digits[2]
    rotated = Image.fromarray(photo_of(digit)).rotate(90, expand=True)  # stored on its side ...
    exif = Image.Exif()
    exif[0x0112] = 6  # ... with "rotate 90 degrees clockwise to display"
    buffer = io.BytesIO()
    rotated.save(buffer, "JPEG", exif=exif.tobytes(), quality=95)
    out = pictures.to_model_input(buffer.getvalue(), SHAPE)
    assert correlation(out[0], digit) > 0.85


def test_blank_picture_gives_an_empty_input():
    for level in (0, 255, 128):
        out = pictures.to_model_input(encode(np.full((50, 40), level, dtype=np.uint8)), SHAPE)
        assert not out.any()


def test_size_and_channels_come_from_the_input_shape(digits):
    out = pictures.to_model_input(encode(digits[3]), (3, 32, 20))
    assert out.shape == (3, 32, 20)
    assert np.array_equal(out[0], out[1]) and np.array_equal(out[1], out[2])
    rows, cols = np.flatnonzero(out[0].any(axis=1)), np.flatnonzero(out[0].any(axis=0))
    assert max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1) <= round(20 / 28 * 32) + 1


@pytest.mark.parametrize("body", [b"", b"not a picture", b"\x89PNG\r\n\x1a\n" + b"\0" * 20])
def test_unreadable_bodies_are_refused(body):
    with pytest.raises(pictures.ImageError, match="not a readable PNG or JPEG"):
        pictures.to_model_input(body, SHAPE)


def test_other_formats_are_refused(digits):
    with pytest.raises(pictures.ImageError, match="not a readable PNG or JPEG"):
        pictures.to_model_input(encode(digits[0], "L", "GIF"), SHAPE)


def test_huge_pictures_are_refused_before_decoding():
    picture = Image.new("1", (8000, 6000))  # 48 megapixels in a PNG of a few kilobytes
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    assert len(buffer.getvalue()) < 100_000
    with pytest.raises(pictures.ImageError, match="8000x6000"):
        pictures.to_model_input(buffer.getvalue(), SHAPE)
