"""Overlay PNGs: panels at least 512 px wide, masks on their model-frame pixels, and a class-colour legend."""

from __future__ import annotations

import numpy as np
from PIL import Image

from samadapt.data.prepared import SliceObject
from samadapt.evaluation.box_protocol import SlicePrediction
from samadapt.evaluation.overlays import MIN_PANEL_SIDE, PALETTE, class_colour, legend_strip, overlay, save_overlays

CLASSES = ["liver", "spleen", "kidney", "liver_lesion"]


class _Prepared:
    """The one method of PreparedDataset that save_overlays reads: the slices of a case."""

    def __init__(self, images: np.ndarray):
        self._images = images

    def images(self, case_id: str) -> np.ndarray:
        return self._images


def _square(side: int, top: int, left: int, size: int) -> np.ndarray:
    mask = np.zeros((side, side), dtype=bool)
    mask[top : top + size, left : left + size] = True
    return mask


def _prediction(side: int) -> SlicePrediction:
    """Slice 0 of case ``c0`` with a liver and a kidney: predictions shifted by 2 px from the truth."""
    truth = np.stack([_square(side, 8, 8, 20), _square(side, 36, 30, 12)])
    predicted = np.stack([_square(side, 10, 10, 20), _square(side, 38, 32, 12)])
    objects = [SliceObject("c0", 0, name, CLASSES.index(name) + 1, 0, (CLASSES.index(name) + 1,), int(m.sum()),
                           (0, 0, 1, 1)) for name, m in zip(("liver", "kidney"), truth, strict=True)]
    return SlicePrediction("c0", 0, objects, predicted, truth)


def _has_block_of(image: np.ndarray, colour: tuple[int, int, int], side: int) -> bool:
    """Whether ``image`` holds a ``side x side`` block of exactly ``colour`` (a legend swatch)."""
    exact = np.all(image == np.asarray(colour, dtype=np.uint8), axis=-1).astype(np.int32)
    window = np.lib.stride_tricks.sliding_window_view(exact, (side, side))
    return bool((window.sum(axis=(-1, -2)) == side * side).any())


def test_overlay_png_is_large_and_has_a_legend_of_the_slices_classes(tmp_path):
    side = 64
    images = np.tile(np.linspace(0, 255, side, dtype=np.uint8), (1, side, 1))  # one slice, a grey ramp
    item = _prediction(side)
    paths = save_overlays(_Prepared(images), [[item], [item]], tmp_path, CLASSES)
    assert [p.name for p in paths] == ["overlay_c0_s000.png"]
    png = np.asarray(Image.open(paths[0]).convert("RGB"))
    panel = MIN_PANEL_SIDE  # 64 px slices drawn 8x: the slice and two method panels side by side
    assert png.shape[1] == 3 * panel and png.shape[0] > panel  # a legend strip below the panels
    legend = png[panel:]
    for name in ("liver", "kidney"):  # the slice's classes, in their overlay colours
        assert _has_block_of(legend, class_colour(CLASSES.index(name)), 12), name
    for name in ("spleen", "liver_lesion"):  # classes absent from the slice get no swatch
        assert not _has_block_of(legend, class_colour(CLASSES.index(name)), 12), name
    # the first method panel: truth outlines in their class colour on the model-frame edge pixels, 8 px wide
    first = png[:panel, panel : 2 * panel]
    liver = tuple(int(c) for c in PALETTE[0])
    row = 8 * 15 + 3  # model-frame row 15 crosses the true liver square (rows and columns 8..27)
    assert all(tuple(first[row, 8 * 8 + dx]) == liver for dx in range(8))  # its left edge, column 8, 8 px wide
    assert tuple(first[row, 8 * 9]) != liver  # column 9: inside the truth, left of the prediction (10..29)
    assert tuple(first[8 * 20, 8 * 20]) != liver  # inside both: the filled prediction, blended, not the outline


def test_overlay_keeps_the_model_frame_at_scale_one():
    side = 32
    image = np.full((side, side), 100, dtype=np.uint8)
    truth = _square(side, 4, 4, 10)[None]
    drawn = overlay(image, truth, truth, [1])
    assert drawn.shape == (side, side, 3)
    twice = overlay(image, truth, truth, [1], scale=2)
    assert twice.shape == (2 * side, 2 * side, 3)
    # every model-frame pixel becomes a 2x2 block of the same colour (a flat slice, so no interpolation shows)
    assert np.array_equal(twice[::2, ::2], drawn) and np.array_equal(twice[1::2, 1::2], drawn)


def test_legend_wraps_to_the_width_it_is_given():
    entries = [(f"class_{i:02d}", i) for i in range(16)]
    narrow, wide = legend_strip(300, entries), legend_strip(3000, entries)
    assert narrow.shape[1] == 300 and wide.shape[1] == 3000
    assert narrow.shape[0] > wide.shape[0]  # more rows of swatches
    for _, colour_id in entries:
        assert _has_block_of(narrow, class_colour(colour_id), 12)
