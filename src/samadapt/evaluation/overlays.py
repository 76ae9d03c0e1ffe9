"""Overlay images: predicted masks filled and ground-truth outlines drawn on a slice."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from scipy import ndimage

from samadapt.io.atomic import atomic_path

if TYPE_CHECKING:
    from samadapt.data.prepared import PreparedDataset
    from samadapt.evaluation.box_protocol import SlicePrediction

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


def save_overlays(
    prepared: PreparedDataset,
    columns: Sequence[Sequence[SlicePrediction]],
    out: Path,
    classes: list[str],
    count: int = 3,
) -> list[Path]:
    """Side-by-side PNGs of the ``count`` slices with most objects: the slice, then one panel per column.

    Args:
        prepared: the dataset the predictions come from (for the slice images).
        columns: one list of predictions per method (e.g. per model), in panel order. The slices are chosen
            from the first column (most objects, then case id and slice index); every other column must
            hold the same slices.
        out: folder of the PNGs, ``overlay_<case_id>_s<slice:03d>.png``.
        classes: class names; an object's colour is its class's position in this list.
        count: how many slices.

    Each panel shows a method's predicted masks filled, with the true outlines on top (model frame).
    """
    if not columns:
        return []
    chosen = sorted(columns[0], key=lambda p: (-len(p.objects), p.case_id, p.slice))[:count]
    lookup = [{(p.case_id, p.slice): p for p in column} for column in columns]
    paths = []
    for first in chosen:
        image = np.asarray(prepared.images(first.case_id)[first.slice])
        colours = [classes.index(obj.class_name) for obj in first.objects]
        panels = [as_rgb(image)]
        for by_key in lookup:
            item = by_key[(first.case_id, first.slice)]
            panels.append(overlay(image, item.predicted, item.truth, colours))
        paths.append(save_side_by_side(out / f"overlay_{first.case_id}_s{first.slice:03d}.png", panels))
    return paths
