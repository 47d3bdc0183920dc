"""A PNG or JPEG picture of a digit brought to the form of MNIST's digits.

MNIST's digits were made by scaling each digit to fit a 20x20 box (keeping its aspect ratio, with
anti-aliasing, hence grey edges) and centring that box by its centre of mass in a 28x28 field, light
strokes on black. This does the same for any picture, for any input size the model declares:

1. orientation from EXIF applied; transparency flattened (ink on a transparent canvas counts as ink);
2. converted to grey (ITU-R 601 luma);
3. polarity from the border: a light border means dark ink on light paper, and the picture is inverted;
4. the background level (the border's median) is subtracted and the contrast stretched to 0-255;
5. cropped to the strokes (pixels above 15% of the brightest), scaled so that the longer side
   fills 20/28 of the input (Lanczos filter), and pasted so that its centre of mass is at the centre
   (pixel 14 of 28, where MNIST put it): an MNIST digit comes out (nearly) unchanged.

A picture without any strokes becomes an empty (black) input.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

MAX_PIXELS = 40_000_000  # a small PNG can decode to gigabytes: refuse pictures larger than this
BOX_FRACTION = 20 / 28  # MNIST: 20x20 box in a 28x28 field
STROKE_THRESHOLD = 0.15  # of the brightest pixel, after background removal: what counts as stroke
FORMATS = ("PNG", "JPEG")


class ImageError(ValueError):
    """The body is not a picture this module can read; the message says why."""


def to_model_input(body: bytes, input_shape: tuple[int, ...]) -> np.ndarray:
    """float32 (C, H, W) in [0, 1] for a model taking `input_shape`; grey repeated over C channels."""
    channels, height, width = input_shape
    picture = _open(body, (width, height))
    grey = _flatten(picture)
    digit = _normalise(grey)
    field = _fit(digit, height, width)
    return np.repeat(field[np.newaxis], channels, axis=0)


def _open(body: bytes, size: tuple[int, int]) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            picture = Image.open(io.BytesIO(body), formats=FORMATS)
            if picture.width * picture.height > MAX_PIXELS:
                raise ImageError(
                    f"the picture is {picture.width}x{picture.height}; at most {MAX_PIXELS} pixels are accepted"
                )
            # JPEG can decode at 1/2, 1/4 or 1/8 scale: far faster for photos, still larger than needed.
            picture.draft("L", (size[0] * 8, size[1] * 8))
            picture = ImageOps.exif_transpose(picture)
            picture.load()
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise ImageError(f"the body is not a readable PNG or JPEG picture: {e}") from None
    return picture


def _flatten(picture: Image.Image) -> np.ndarray:
    """Grey levels 0-255 as float32, transparency resolved."""
    has_alpha = picture.mode in ("RGBA", "LA", "PA") or "transparency" in picture.info
    if not has_alpha:
        return np.asarray(picture.convert("L"), dtype=np.float32)
    rgba = picture.convert("RGBA")
    alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255
    grey = np.asarray(rgba.convert("L"), dtype=np.float32)
    opaque = alpha > 0.5
    if not opaque.any():
        return np.zeros_like(grey)
    # Put the ink on the background that contrasts with it: light ink on black, dark ink on white.
    background = 0.0 if float(np.median(grey[opaque])) > 127 else 255.0
    return grey * alpha + background * (1 - alpha)


def _normalise(grey: np.ndarray) -> np.ndarray:
    """Light strokes on a zero background, brightest stroke at 255."""
    border = np.concatenate([grey[0], grey[-1], grey[1:-1, 0], grey[1:-1, -1]])
    level = float(np.median(border))
    if level > 127:
        grey = 255 - grey
        level = 255 - level
    ink = np.clip(grey - level, 0, None)
    peak = float(ink.max())
    if peak < 1:
        return np.zeros_like(grey)
    return ink * (255 / peak)


def _fit(digit: np.ndarray, height: int, width: int) -> np.ndarray:
    field = np.zeros((height, width), dtype=np.float32)
    rows = np.flatnonzero((digit > 255 * STROKE_THRESHOLD).any(axis=1))
    cols = np.flatnonzero((digit > 255 * STROKE_THRESHOLD).any(axis=0))
    if rows.size == 0:
        return field
    crop = digit[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    box_h, box_w = max(1, round(height * BOX_FRACTION)), max(1, round(width * BOX_FRACTION))
    scale = min(box_h / crop.shape[0], box_w / crop.shape[1])
    new_h, new_w = max(1, round(crop.shape[0] * scale)), max(1, round(crop.shape[1] * scale))
    small = Image.fromarray(np.clip(crop, 0, 255).astype(np.uint8), mode="L").resize(
        (new_w, new_h), Image.Resampling.LANCZOS
    )
    patch = np.asarray(small, dtype=np.float32) / 255
    total = float(patch.sum())
    if total <= 0:
        return field
    # Place the patch so that its centre of mass lands on the field's centre, clipped to the field.
    com_y = float((patch.sum(axis=1) * np.arange(new_h)).sum()) / total
    com_x = float((patch.sum(axis=0) * np.arange(new_w)).sum()) / total
    top = min(max(round(height / 2 - com_y), 0), height - new_h)
    left = min(max(round(width / 2 - com_x), 0), width - new_w)
    field[top : top + new_h, left : left + new_w] = patch
    return field
