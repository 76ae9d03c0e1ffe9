"""Overlay images: predicted masks filled and ground-truth outlines drawn on a slice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from samadapt.io.atomic import atomic_path

PALETTE = np.array([
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
    (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195),
], dtype=np.float32)


def as_rgb(image: np.ndarray) -> np.ndarray:
    """``SxS`` grey or ``SxSx3`` RGB -> ``SxSx3`` (grey replicated to three channels, dtype kept)."""
    return np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image


def overlay(image: np.ndarray, predicted: np.ndarray, truth: np.ndarray, colour_ids: list[int]) -> np.ndarray:
    """``SxS[x3]`` uint8 slice + ``NxSxS`` predicted (filled, 45% opacity) and true (outline) masks -> ``SxSx3``."""
    rgb = as_rgb(image).astype(np.float32)
    for mask, colour_id in zip(predicted, colour_ids, strict=True):
        colour = PALETTE[colour_id % len(PALETTE)]
        rgb[mask] = 0.55 * rgb[mask] + 0.45 * colour
    for mask, colour_id in zip(truth, colour_ids, strict=True):
        edge = mask & ~ndimage.binary_erosion(mask)
        rgb[edge] = PALETTE[colour_id % len(PALETTE)]
    return np.clip(rgb, 0, 255).astype(np.uint8)


def save_side_by_side(path: Path, panels: list[np.ndarray]) -> Path:
    """Save ``SxSx3`` panels next to each other as one PNG (atomically)."""
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(np.concatenate(panels, axis=1)).save(tmp, format="PNG")
    return path
