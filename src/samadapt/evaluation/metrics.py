"""Overlap and surface metrics for binary masks, and their aggregation over objects.

Masks are numpy bool arrays, 2D ``(H, W)`` or 3D ``(Z, Y, X)``; prediction and reference share one grid.
``spacing`` is the physical size of a pixel/voxel in mm **in the array's axis order**: ``(row, col)`` for
2D, ``(z, y, x)`` for a ``(Z, Y, X)`` volume. That is SimpleITK's ``GetSpacing()`` reversed, since
SimpleITK reports ``(x, y, z)``. A single number means isotropic spacing.

Dice and IoU come from voxel counts (:mod:`samadapt.overlap`, which holds their rule for empty masks). The
surface metrics wrap MONAI (``compute_surface_dice`` and ``compute_hausdorff_distance``): boundaries are the
masks' edge voxels, and distances are Euclidean in mm.

Empty masks follow one convention throughout (:func:`segmentation_scores`):

==========================  ======  =====  =====  ======
case                         Dice    IoU    NSD    HD95
==========================  ======  =====  =====  ======
both empty                   1       1      1      0
exactly one empty            0       0      0      nan
==========================  ======  =====  =====  ======

When only one mask is empty, HD95 has no finite value. It is ``nan`` and is **not** replaced by an invented
distance such as the image diagonal. The aggregation helpers average HD95 over the objects where it is
defined and count the others separately (``hd95_undefined``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance, compute_surface_dice

from samadapt.overlap import check_masks, dice, iou

METRICS: tuple[str, ...] = ("dice", "iou", "nsd", "hd95")
"""The keys :func:`segmentation_scores` returns, in report order."""


def _spacing_tuple(spacing: float | Sequence[float], ndim: int) -> tuple[float, ...]:
    values = (float(spacing),) * ndim if np.isscalar(spacing) else tuple(float(s) for s in spacing)
    if len(values) != ndim or not all(s > 0 and math.isfinite(s) for s in values):
        raise ValueError(f"spacing must be {ndim} positive numbers in the array's axis order, got {spacing}")
    return values


def _as_batch(mask: np.ndarray) -> torch.Tensor:
    """``(H, W)`` / ``(Z, Y, X)`` bool -> ``1x1x...`` tensor: MONAI's one-hot, batch-first layout."""
    return torch.from_numpy(np.ascontiguousarray(mask))[None, None]


def normalized_surface_dice(
    pred: np.ndarray, gt: np.ndarray, spacing: float | Sequence[float] = 1.0, tolerance_mm: float = 1.0
) -> float:
    """Normalized surface Dice: the fraction of both boundaries that lie within ``tolerance_mm`` of the other.

    Computed by ``monai.metrics.compute_surface_dice`` (edge-voxel boundaries, distance ``<=`` tolerance).
    Returns 1 when both masks are empty and 0 when exactly one is.
    """
    pred, gt = check_masks(pred, gt)
    spacing_t = _spacing_tuple(spacing, pred.ndim)
    has_pred, has_gt = bool(pred.any()), bool(gt.any())
    if not (has_pred or has_gt):
        return 1.0
    if has_pred != has_gt:
        return 0.0
    with warnings.catch_warnings():
        # MONAI 1.5+ passes one of its own deprecated arguments internally.
        warnings.simplefilter("ignore", FutureWarning)
        value = compute_surface_dice(
            _as_batch(pred), _as_batch(gt), class_thresholds=[float(tolerance_mm)],
            include_background=True, spacing=spacing_t,
        )
    return float(value.reshape(-1)[0])


def hausdorff_distance_95(pred: np.ndarray, gt: np.ndarray, spacing: float | Sequence[float] = 1.0) -> float:
    """Symmetric 95th-percentile Hausdorff distance in mm (``monai.metrics.compute_hausdorff_distance``).

    This is the larger of the two directed 95th percentiles of edge-to-edge distances. Returns 0 when both
    masks are empty and ``nan`` when exactly one is, because the distance is then undefined.
    """
    pred, gt = check_masks(pred, gt)
    spacing_t = _spacing_tuple(spacing, pred.ndim)
    has_pred, has_gt = bool(pred.any()), bool(gt.any())
    if not (has_pred or has_gt):
        return 0.0
    if has_pred != has_gt:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        value = compute_hausdorff_distance(
            _as_batch(pred), _as_batch(gt), include_background=True, percentile=95, spacing=spacing_t,
        )
    return float(value.reshape(-1)[0])


def segmentation_scores(
    pred: np.ndarray, gt: np.ndarray, spacing: float | Sequence[float] = 1.0, nsd_tolerance_mm: float = 1.0
) -> dict[str, float]:
    """Dice, IoU, NSD (at ``nsd_tolerance_mm``) and HD95 (mm) of one binary prediction.

    Args:
        pred: ``(H, W)`` or ``(Z, Y, X)`` bool prediction.
        gt: reference mask of the same shape.
        spacing: pixel/voxel size in mm in the array's axis order (``(z, y, x)`` for volumes).
        nsd_tolerance_mm: boundary tolerance of the normalized surface Dice.

    Returns:
        ``{"dice", "iou", "nsd", "hd95"}`` as floats. The module docstring gives the empty-mask convention.
    """
    return {
        "dice": dice(pred, gt),
        "iou": iou(pred, gt),
        "nsd": normalized_surface_dice(pred, gt, spacing, nsd_tolerance_mm),
        "hd95": hausdorff_distance_95(pred, gt, spacing),
    }


def mean_scores(
    rows: Iterable[Mapping[str, object]], metrics: Sequence[str] = METRICS
) -> dict[str, float | int]:
    """Average per-object score rows, skipping ``nan`` values.

    Args:
        rows: one mapping per object, holding at least the keys in ``metrics``.
        metrics: the score keys to average.

    Returns:
        ``{"n": rows, <metric>: mean over the rows where it is defined (nan if none), ...,
        "<metric>_undefined": count of nan rows}``. The ``_undefined`` count appears only for metrics that
        have nan rows, which under the empty convention is HD95 alone.
    """
    rows = list(rows)
    out: dict[str, float | int] = {"n": len(rows)}
    for key in metrics:
        values = np.array([float(row[key]) for row in rows], dtype=np.float64)  # type: ignore[arg-type]
        defined = values[~np.isnan(values)]
        out[key] = float(defined.mean()) if defined.size else math.nan
        if defined.size < values.size:
            out[f"{key}_undefined"] = int(values.size - defined.size)
    return out


def mean_by(
    rows: Iterable[Mapping[str, object]], key: str, metrics: Sequence[str] = METRICS
) -> dict[object, dict[str, float | int]]:
    """Group rows by ``row[key]`` and average each group with :func:`mean_scores`, in first-seen order."""
    groups: dict[object, list[Mapping[str, object]]] = {}
    for row in rows:
        groups.setdefault(row[key], []).append(row)
    return {name: mean_scores(group, metrics) for name, group in groups.items()}


def per_class_mean(
    rows: Iterable[Mapping[str, object]], class_key: str = "class", metrics: Sequence[str] = METRICS
) -> dict[object, dict[str, float | int]]:
    """Mean scores per class: each class averages its objects over all cases."""
    return mean_by(rows, class_key, metrics)


def per_case_mean(
    rows: Iterable[Mapping[str, object]], case_key: str = "case_id", metrics: Sequence[str] = METRICS
) -> dict[object, dict[str, float | int]]:
    """Mean scores per case: each case averages all its objects with equal weight, whatever their class."""
    return mean_by(rows, case_key, metrics)
