"""2D images and binary masks (PNG, JPEG, TIFF, BMP), read and written through Pillow.

Arrays are row-major ``HxW`` (grey) or ``HxWx3`` (RGB), pixel ``[row, col]`` = ``[y, x]``; 2D files carry
no physical spacing.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from samadapt.errors import InputFileError
from samadapt.io.atomic import atomic_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

# Pillow modes holding one 16-bit unsigned grey channel (byte order varies).
_UINT16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def _open(path: Path) -> Image.Image:
    """Open and fully decode ``path`` (Pillow decodes lazily; truncation only shows on load)."""
    if not path.is_file():
        raise InputFileError(f"{path}: no such image file; check the path")
    try:
        with Image.open(path) as image:
            if getattr(image, "n_frames", 1) > 1:
                raise InputFileError(f"{path}: holds {image.n_frames} frames; samadapt reads single 2D "
                                     "images (read stacks as volumes)")
            image.load()
            return ImageOps.exif_transpose(image)  # a copy, upright; independent of the closed file
    except InputFileError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as err:
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise InputFileError(f"{path}: cannot be read as an image ({reason}); check the file is a complete "
                             "PNG, JPEG or TIFF") from None


def _grey_if_equal(rgb: np.ndarray) -> np.ndarray:
    """``HxW`` when the three channels of ``rgb`` ``HxWx3`` are identical, else ``rgb`` unchanged."""
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]):
        return np.ascontiguousarray(rgb[..., 0])
    return rgb


def read_image_2d(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a 2D image as a numpy array.

    Returns ``HxW`` uint8 for 8-bit grey (and 1-bit, as 0/255), ``HxW`` uint16 for 16-bit grey, and
    ``HxWx3`` uint8 for colour: alpha is dropped, palette and other colour modes become RGB, and an RGB
    image whose three channels are equal (a CT slice saved as RGB) is returned as grey ``HxW``. 32-bit
    integer or float TIFFs come back ``HxW`` int32 / float32. EXIF orientation is applied. Raises
    :class:`InputFileError` naming the file when it is missing, unreadable, truncated or multi-frame.
    """
    path = Path(path)
    image = _open(path)
    mode = image.mode
    if mode in _UINT16_MODES:
        return np.asarray(image).astype(np.uint16)
    if mode == "I":  # 32-bit int; Pillow also uses it for some 16-bit PNGs
        array = np.asarray(image)
        if array.size and array.min() >= 0 and array.max() <= np.iinfo(np.uint16).max:
            return array.astype(np.uint16)
        return array.astype(np.int32)
    if mode == "F":
        return np.asarray(image).astype(np.float32)
    if mode in ("1", "L", "LA", "La"):
        return np.asarray(image.convert("L"))
    return _grey_if_equal(np.asarray(image.convert("RGB")))


def read_mask_2d(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a binary mask as ``HxW`` bool: a pixel is foreground when nonzero (in any RGB channel).

    Alpha is ignored, as in :func:`read_image_2d`. Raises :class:`InputFileError` for unreadable files.
    """
    array = read_image_2d(path)
    if array.ndim == 3:
        return np.any(array != 0, axis=-1)
    return array != 0


def write_mask_2d(mask: np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Write ``mask`` ``HxW`` (bool, or nonzero = foreground) atomically as an 8-bit PNG of 0/255."""
    path = Path(path)
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be HxW, got shape {mask.shape}")
    if path.suffix.lower() != ".png":
        raise ValueError(f"{path}: masks are written as PNG; use a .png name")
    image = Image.fromarray(np.where(mask != 0, 255, 0).astype(np.uint8))  # 2D uint8 -> mode "L"
    try:
        with atomic_path(path, suffix=".png") as tmp:
            image.save(tmp, format="PNG")
    except OSError as err:
        raise InputFileError(f"{path}: cannot be written ({err.strerror or err}); "
                             "check the folder is writable and has space") from None
    return path
