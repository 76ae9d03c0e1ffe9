"""SAM's model frame: longest side resized to ``image_size``, then padded bottom/right to a square.

Frames:

- *source frame*: a 2D slice ``(h, w)`` as it comes out of the volume (after orientation) or 2D file.
- *model frame*: ``(S, S)`` with ``S = image_size``. The slice is resized to ``(h', w') =
  frame_shape(h, w, S)`` (SAM's ``ResizeLongestSide.get_preprocess_shape``: the longest side becomes
  ``S``, the other keeps the aspect ratio of the *pixel grid*) and placed in the top-left corner;
  rows ``h'..S`` and columns ``w'..S`` are padding (0). ``(h', w')`` is the *valid region*.

Anisotropic pixels are not resampled to isotropic: like SAM we resize the pixel grid, so a model-frame
pixel covers ``(sy * h / h', sx * w / w')`` mm (see :func:`model_frame_spacing`).

Images are resized exactly as SAM's ``ResizeLongestSide.apply_image`` does (PIL bilinear with
antialiasing) and stay ``uint8``; label maps use nearest-neighbour with pixel-centre alignment
(``nearest-exact``), so integer values are never blended.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.utils.transforms import ResizeLongestSide


def frame_shape(h: int, w: int, image_size: int) -> tuple[int, int]:
    """``(h', w')``: the size of an ``(h, w)`` slice after resizing its longest side to ``image_size``."""
    new_h, new_w = ResizeLongestSide.get_preprocess_shape(int(h), int(w), int(image_size))
    return int(new_h), int(new_w)


def model_frame_spacing(spacing_hw: tuple[float, float], source_hw: tuple[int, int],
                        image_size: int) -> tuple[float, float]:
    """Size ``(sy, sx)`` in mm of one model-frame pixel, from the source pixel spacing ``(sy, sx)``."""
    h, w = source_hw
    new_h, new_w = frame_shape(h, w, image_size)
    return float(spacing_hw[0]) * h / new_h, float(spacing_hw[1]) * w / new_w


def _pad_bottom_right(x: np.ndarray, image_size: int) -> np.ndarray:
    """Pad axes 0 and 1 of ``x`` (``h' x w' [x C]``) with zeros to ``image_size x image_size``."""
    out = np.zeros((image_size, image_size) + x.shape[2:], dtype=x.dtype)
    out[: x.shape[0], : x.shape[1]] = x
    return out


def to_model_frame_image(image: np.ndarray, image_size: int) -> np.ndarray:
    """Resize and pad one ``uint8`` slice into the model frame.

    Args:
        image: ``HxW`` (grey) or ``HxWx3`` (RGB) ``uint8`` in the source frame.
        image_size: ``S``, the model's input side.

    Returns:
        ``SxS`` or ``SxSx3`` ``uint8``; the valid region is ``[:h', :w']`` with ``(h', w') = frame_shape``.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (window it first), got {image.dtype}")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"image must be HxW or HxWx3, got shape {image.shape}")
    h, w = image.shape[:2]
    if (h, w) == frame_shape(h, w, image_size):
        resized = image
    else:
        resized = ResizeLongestSide(image_size).apply_image(np.ascontiguousarray(image))
    return _pad_bottom_right(resized, image_size)


def _resize_nearest(labels: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour (pixel-centre) resize of the last two axes; dtype and values are preserved."""
    if tuple(labels.shape[-2:]) == tuple(out_hw):
        return labels.copy()
    lead = labels.shape[:-2]
    flat = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.float64)).reshape(1, -1, *labels.shape[-2:])
    resized = F.interpolate(flat, size=tuple(int(s) for s in out_hw), mode="nearest-exact")
    return resized.reshape(*lead, *out_hw).numpy().astype(labels.dtype)


def to_model_frame_labels(labels: np.ndarray, image_size: int) -> np.ndarray:
    """Resize (nearest) and zero-pad a label map into the model frame.

    Args:
        labels: ``HxW`` (or ``NxHxW``) integer label map in the source frame.
        image_size: ``S``.

    Returns:
        ``SxS`` (or ``NxSxS``), same dtype; padding is 0.
    """
    labels = np.asarray(labels)
    if labels.ndim not in (2, 3):
        raise ValueError(f"labels must be HxW or NxHxW, got shape {labels.shape}")
    h, w = labels.shape[-2:]
    new_h, new_w = frame_shape(h, w, image_size)
    resized = _resize_nearest(labels, (new_h, new_w))
    out = np.zeros(labels.shape[:-2] + (image_size, image_size), dtype=labels.dtype)
    out[..., :new_h, :new_w] = resized
    return out


def from_model_frame_labels(labels: np.ndarray, original_hw: tuple[int, int]) -> np.ndarray:
    """Bring a model-frame label map (or mask) back onto its source slice.

    Crops the valid region ``[:h', :w']`` (``(h', w') = frame_shape(h, w, S)``) and resizes it with
    nearest neighbour to ``original_hw = (h, w)``.

    Args:
        labels: ``SxS`` (or ``NxSxS``) label map or boolean mask in the model frame.
        original_hw: ``(h, w)`` of the source slice.

    Returns:
        ``hxw`` (or ``Nxhxw``) with the input's dtype.
    """
    labels = np.asarray(labels)
    if labels.ndim not in (2, 3) or labels.shape[-1] != labels.shape[-2]:
        raise ValueError(f"labels must be SxS or NxSxS, got shape {labels.shape}")
    h, w = (int(v) for v in original_hw)
    new_h, new_w = frame_shape(h, w, labels.shape[-1])
    return _resize_nearest(labels[..., :new_h, :new_w], (h, w))
