"""Overlay images: predicted masks filled and ground-truth outlines drawn on a slice, with a class legend.

Panels are drawn at least ``MIN_PANEL_SIDE`` pixels wide (a 256 px model frame at 2x): the slice is
resized bilinearly, masks and outlines by pixel replication, so every outline stays on its model-frame
pixels. Under the panels, a legend strip gives the colour of every class in the slice.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont
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
MIN_PANEL_SIDE = 512
LEGEND_TEXT = "filled: prediction, outline: ground truth"


def as_rgb(image: np.ndarray) -> np.ndarray:
    """``SxS`` grey or ``SxSx3`` RGB -> ``SxSx3`` (grey replicated to three channels, dtype kept)."""
    return np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image


def class_colour(colour_id: int) -> tuple[int, int, int]:
    """The RGB colour of palette entry ``colour_id`` (wrapping around the palette)."""
    return tuple(int(c) for c in PALETTE[colour_id % len(PALETTE)])


def upscale(image: np.ndarray, scale: int) -> np.ndarray:
    """``SxS[x3]`` uint8 -> ``(scale*S)x(scale*S)[x3]``, bilinear (the slice under the overlay)."""
    if scale == 1:
        return image
    height, width = image.shape[:2]
    return np.asarray(Image.fromarray(image).resize((width * scale, height * scale), Image.BILINEAR))


def replicate(masks: np.ndarray, scale: int) -> np.ndarray:
    """``...xSxS`` masks with every pixel repeated ``scale x scale`` times."""
    return masks if scale == 1 else masks.repeat(scale, axis=-2).repeat(scale, axis=-1)


def overlay(image: np.ndarray, predicted: np.ndarray, truth: np.ndarray, colour_ids: list[int],
            scale: int = 1) -> np.ndarray:
    """``SxS[x3]`` uint8 slice + ``NxSxS`` predicted (filled, 45% opacity) and true (outline) masks ->
    ``(scale*S)x(scale*S)x3``; outlines are the masks' model-frame edge pixels, ``scale`` pixels wide."""
    rgb = upscale(as_rgb(image), scale).astype(np.float32)
    for mask, colour_id in zip(predicted, colour_ids, strict=True):
        mask = replicate(np.asarray(mask, dtype=bool), scale)
        rgb[mask] = 0.55 * rgb[mask] + 0.45 * PALETTE[colour_id % len(PALETTE)]
    for mask, colour_id in zip(truth, colour_ids, strict=True):
        mask = np.asarray(mask, dtype=bool)
        edge = replicate(mask & ~ndimage.binary_erosion(mask), scale)
        rgb[edge] = PALETTE[colour_id % len(PALETTE)]
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable font
    except TypeError:  # pragma: no cover - Pillow 10.0
        return ImageFont.load_default()


def legend_strip(width: int, entries: list[tuple[str, int]], note: str = LEGEND_TEXT) -> np.ndarray:
    """An ``HxWx3`` uint8 strip: a colour swatch and the name of each ``(class name, colour id)`` entry,
    wrapped over as many rows as ``width`` needs, then ``note``."""
    font, swatch, pad = _font(16), 16, 10
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    row_height = swatch + pad
    placed, x, y = [], pad, pad
    for name, colour_id in entries:
        advance = swatch + 6 + int(draw.textlength(name, font=font)) + 2 * pad
        if x > pad and x + advance > width:
            x, y = pad, y + row_height
        placed.append((x, y, name, colour_id))
        x += advance
    note_y = y + (row_height if entries else 0)
    strip = Image.new("RGB", (width, note_y + row_height), (24, 24, 24))
    draw = ImageDraw.Draw(strip)
    for x, y, name, colour_id in placed:
        draw.rectangle((x, y, x + swatch - 1, y + swatch - 1), fill=class_colour(colour_id))
        draw.text((x + swatch + 6, y - 1), name, fill=(235, 235, 235), font=font)
    draw.text((pad, note_y - 1), note, fill=(170, 170, 170), font=font)
    return np.asarray(strip)


def save_side_by_side(path: Path, panels: list[np.ndarray], legend: list[tuple[str, int]] | None = None) -> Path:
    """Save ``SxSx3`` panels next to each other as one PNG (atomically); with ``legend`` (``(class name,
    colour id)`` pairs), a :func:`legend_strip` below them."""
    image = np.concatenate(panels, axis=1)
    if legend is not None:
        image = np.concatenate([image, legend_strip(image.shape[1], legend)], axis=0)
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
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

    Each panel shows a method's predicted masks filled, with the true outlines on top (model frame),
    drawn at least ``MIN_PANEL_SIDE`` pixels wide; a legend below names the colour of every class of the slice.
    """
    if not columns:
        return []
    chosen = sorted(columns[0], key=lambda p: (-len(p.objects), p.case_id, p.slice))[:count]
    lookup = [{(p.case_id, p.slice): p for p in column} for column in columns]
    paths = []
    for first in chosen:
        image = np.asarray(prepared.images(first.case_id)[first.slice])
        scale = max(1, -(-MIN_PANEL_SIDE // max(image.shape[:2])))
        colours = [classes.index(obj.class_name) for obj in first.objects]
        legend = [(classes[c], c) for c in sorted(set(colours))]
        panels = [upscale(as_rgb(image), scale)]
        for by_key in lookup:
            item = by_key[(first.case_id, first.slice)]
            panels.append(overlay(image, item.predicted, item.truth, colours, scale))
        paths.append(save_side_by_side(out / f"overlay_{first.case_id}_s{first.slice:03d}.png", panels, legend))
    return paths
