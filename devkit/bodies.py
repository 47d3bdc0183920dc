"""Request bodies for `serve`: arrays as .npy bytes, pictures as PNG bytes."""

from __future__ import annotations

import io

import numpy as np


def npy(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    """`array` as a .npy file; `allow_pickle` only to build a hostile body (object arrays are pickled)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def png(image: np.ndarray) -> bytes:
    """A 2-D uint8 array as a greyscale PNG (needs Pillow, imported only here)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()
