"""What goes over the wire: slice images as PNG, masks and label slices as run lengths.

Run lengths (``{"height", "width", "values", "lengths"}``): the ``h x w`` array read row by row is
``values[0]`` repeated ``lengths[0]`` times, then ``values[1]`` ... A binary mask uses values 0/1; a label
slice its class values. The page decodes it into an ``ImageData`` in a few lines.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def run_lengths(array: np.ndarray) -> dict:
    """Encode an ``h x w`` integer or boolean array as row-major run lengths."""
    array = np.asarray(array)
    h, w = array.shape
    flat = array.reshape(-1).astype(np.int64)
    if flat.size == 0:
        return {"height": h, "width": w, "values": [], "lengths": []}
    starts = np.flatnonzero(np.r_[True, flat[1:] != flat[:-1]])
    lengths = np.diff(np.r_[starts, flat.size])
    return {"height": int(h), "width": int(w), "values": flat[starts].tolist(), "lengths": lengths.tolist()}


def from_run_lengths(encoded: dict) -> np.ndarray:
    """Inverse of :func:`run_lengths` (``h x w`` int64)."""
    flat = np.repeat(np.asarray(encoded["values"], dtype=np.int64), np.asarray(encoded["lengths"], dtype=np.int64))
    return flat.reshape(int(encoded["height"]), int(encoded["width"]))


def png_bytes(image: np.ndarray) -> bytes:
    """An ``h x w`` ``uint8`` image as PNG bytes (grey)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
