"""Metrics against hand-computed values (squares, cubes, a shifted disk) and the empty-mask convention."""

from __future__ import annotations

import math

import numpy as np
import pytest

from samadapt.evaluation.metrics import (
    dice,
    hausdorff_distance_95,
    iou,
    mean_scores,
    normalized_surface_dice,
    per_case_mean,
    per_class_mean,
    segmentation_scores,
)


def _square(top: int, left: int, side: int = 20, shape: tuple[int, int] = (48, 48)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + side, left : left + side] = True
    return mask


def _disk(cy: float, cx: float, r: float, shape: tuple[int, int] = (64, 64)) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def test_squares_with_known_overlap() -> None:
    gt = _square(10, 10)
    pred = _square(13, 10)  # shifted 3 rows: overlap 17x20 = 340 px, union 460 px
    assert dice(pred, gt) == pytest.approx(2 * 340 / 800)
    assert iou(pred, gt) == pytest.approx(340 / 460)
    # The two 20x20 edges have 76 px each. On each edge, 34 px lie on the other edge (the two shared side
    # columns, rows 13..29) and 4 more lie within 1 px of it (one step along each column and row).
    assert normalized_surface_dice(pred, gt, 1.0, tolerance_mm=1.0) == pytest.approx(2 * 38 / 152)
    assert normalized_surface_dice(pred, gt, 1.0, tolerance_mm=3.0) == pytest.approx(1.0)
    # Most of both top and bottom edges are exactly 3 px from the other mask's edge.
    assert hausdorff_distance_95(pred, gt, 1.0) == pytest.approx(3.0)


def test_identical_masks_are_perfect() -> None:
    gt = _disk(30, 30, 10)
    perfect = {"dice": 1.0, "iou": 1.0, "nsd": 1.0, "hd95": 0.0}
    assert segmentation_scores(gt, gt.copy(), (0.7, 0.7)) == perfect


def test_anisotropic_spacing_changes_hd95_and_nsd() -> None:
    gt = _square(10, 10)
    pred = _square(13, 10)  # shifted along rows (axis 0) only
    assert hausdorff_distance_95(pred, gt, (2.0, 1.0)) == pytest.approx(6.0)  # 3 rows of 2 mm
    assert hausdorff_distance_95(pred, gt, (1.0, 2.0)) == pytest.approx(3.0)  # columns do not matter
    assert hausdorff_distance_95(pred, gt, 0.5) == pytest.approx(1.5)
    # 3 mm tolerance covers the 3-row shift at 1 mm rows but not at 2 mm rows.
    assert normalized_surface_dice(pred, gt, (1.0, 1.0), 3.0) == pytest.approx(1.0)
    assert normalized_surface_dice(pred, gt, (2.0, 1.0), 3.0) < 0.7
    # Dice and IoU do not depend on spacing.
    a = segmentation_scores(pred, gt, (2.0, 1.0))
    b = segmentation_scores(pred, gt, (1.0, 1.0))
    assert (a["dice"], a["iou"]) == (b["dice"], b["iou"])


def test_volume_spacing_is_in_zyx_order() -> None:
    gt = np.zeros((12, 24, 24), dtype=bool)
    gt[2:8, 5:15, 5:15] = True
    pred = np.roll(gt, 2, axis=0)  # shifted 2 slices along z
    assert dice(pred, gt) == pytest.approx(2 * 4 / 12)
    assert hausdorff_distance_95(pred, gt, (3.0, 0.8, 0.8)) == pytest.approx(6.0)  # 2 slices of 3 mm
    assert hausdorff_distance_95(pred, gt, (1.0, 0.8, 0.8)) == pytest.approx(2.0)
    scores = segmentation_scores(pred, gt, (3.0, 0.8, 0.8), nsd_tolerance_mm=6.0)
    assert scores["nsd"] == pytest.approx(1.0)


def test_shifted_disk_matches_geometry() -> None:
    r, d = 12.0, 4.0
    gt = _disk(32, 30, r)
    pred = _disk(32, 30 + d, r)
    lens = 2 * r * r * math.acos(d / (2 * r)) - (d / 2) * math.sqrt(4 * r * r - d * d)
    assert dice(pred, gt) == pytest.approx(lens / (math.pi * r * r), abs=0.02)
    assert iou(pred, gt) == pytest.approx(lens / (2 * math.pi * r * r - lens), abs=0.02)
    hd95 = hausdorff_distance_95(pred, gt, 1.0)
    assert 3.0 <= hd95 <= d  # the front of the shift is d away; edges on the sides are closer
    assert hausdorff_distance_95(pred, gt, 2.0) == pytest.approx(2 * hd95)  # isotropic scaling
    assert normalized_surface_dice(pred, gt, 1.0, tolerance_mm=d) == pytest.approx(1.0)
    assert 0.0 < normalized_surface_dice(pred, gt, 1.0, tolerance_mm=1.0) < 1.0


def test_empty_mask_convention() -> None:
    empty = np.zeros((16, 16), dtype=bool)
    some = _square(2, 2, side=5, shape=(16, 16))
    assert segmentation_scores(empty, empty.copy(), 1.0) == {"dice": 1.0, "iou": 1.0, "nsd": 1.0, "hd95": 0.0}
    for pred, gt in ((empty, some), (some, empty)):
        scores = segmentation_scores(pred, gt, 1.0)
        assert (scores["dice"], scores["iou"], scores["nsd"]) == (0.0, 0.0, 0.0)
        assert math.isnan(scores["hd95"])  # undefined, not the image diagonal
    empty_3d = np.zeros((3, 4, 4), dtype=bool)
    assert segmentation_scores(empty_3d, empty_3d.copy(), (2.0, 1.0, 1.0))["hd95"] == 0.0


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="same shape"):
        dice(np.zeros((4, 4), bool), np.zeros((4, 5), bool))
    with pytest.raises(ValueError, match="spacing"):
        hausdorff_distance_95(np.ones((4, 4), bool), np.ones((4, 4), bool), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="2D"):
        iou(np.zeros(4, bool), np.zeros(4, bool))


def test_aggregation_per_class_and_case() -> None:
    rows = [
        {"case_id": "a", "class": "liver", "dice": 0.9, "iou": 0.8, "nsd": 0.7, "hd95": 2.0},
        {"case_id": "a", "class": "tumor", "dice": 0.0, "iou": 0.0, "nsd": 0.0, "hd95": math.nan},
        {"case_id": "b", "class": "liver", "dice": 0.7, "iou": 0.6, "nsd": 0.5, "hd95": 4.0},
        {"case_id": "b", "class": "tumor", "dice": 0.5, "iou": 0.4, "nsd": 0.3, "hd95": 6.0},
    ]
    by_class = per_class_mean(rows)
    assert list(by_class) == ["liver", "tumor"]
    assert by_class["liver"] == pytest.approx({"n": 2, "dice": 0.8, "iou": 0.7, "nsd": 0.6, "hd95": 3.0})
    tumor = by_class["tumor"]
    assert tumor["n"] == 2 and tumor["dice"] == pytest.approx(0.25)
    assert tumor["hd95"] == pytest.approx(6.0) and tumor["hd95_undefined"] == 1
    by_case = per_case_mean(rows)
    assert by_case["a"]["dice"] == pytest.approx(0.45) and by_case["a"]["hd95"] == pytest.approx(2.0)
    assert by_case["b"]["nsd"] == pytest.approx(0.4) and "hd95_undefined" not in by_case["b"]
    only_nan = mean_scores([rows[1]])
    assert math.isnan(only_nan["hd95"]) and only_nan["hd95_undefined"] == 1
    assert mean_scores([])["n"] == 0
