"""3D scores of box-prompt predictions: per-slice masks stacked back into volumes, one row per (case, class).

For each case and class, the predicted and true masks of the class's objects on a slice are merged (union
over instances) and placed at the slice's position along the prepared slicing axis
(``meta["slice_indices"]``, the index in the source volume). Slices between them that carry no object of
the class stay empty, so the physical gaps are kept. The stack is cropped in z to the slices that hold the
class and in-plane to the unpadded region ``meta["valid_hw"]``. Voxel spacing is
``(slice_spacing_mm, sy, sx)`` from the case meta: ``(z, y, x)`` in the stack's axis order, as
:func:`~samadapt.evaluation.metrics.segmentation_scores` expects.

**Caveat.** Box prompts exist only on slices where the object is present (the box comes from the ground
truth). A model is therefore never asked about slices without the object and cannot place false
positives there. These 3D scores measure *in-slice quality, stacked*: how well the per-slice masks fit
together into the organ's volume (Dice weighted by voxels, surface distances across slices). They are not
the scores of a 3D segmentation that had to find the object's extent itself. The truth volumes hold the
prepared objects, so objects under the prepare step's ``min_area`` are absent from both sides.

Datasets of 2D images (``meta["axis"] == "2d"``) have no volumes; their cases are skipped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

import numpy as np

from samadapt.evaluation.box_protocol import SlicePrediction
from samadapt.evaluation.metrics import segmentation_scores


class CaseMeta(Protocol):
    """What scoring needs of a prepared dataset: the ``meta.json`` of a case."""

    def meta(self, case_id: str) -> dict: ...


def volume_spacing(meta: Mapping) -> tuple[float, float, float]:
    """``(slice_spacing_mm, sy, sx)``: voxel size in mm of a stacked ``(Z, Y, X)`` volume of the case."""
    sy, sx = (float(s) for s in meta["pixel_spacing_mm"])
    return float(meta["slice_spacing_mm"]), sy, sx


def stack_class_volumes(
    meta: Mapping, predictions: Sequence[SlicePrediction]
) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
    """Stack one case's per-slice masks into volumes, per class.

    Args:
        meta: the case's ``meta.json`` (``slice_indices``, ``valid_hw``).
        predictions: the case's :class:`SlicePrediction` items (any order; masks ``NxSxS`` bool, model frame).

    Returns:
        ``{class name: (predicted, truth, n_slices)}`` in first-seen class order. ``predicted`` and
        ``truth`` are ``(Z, h, w)`` bool with ``h, w = valid_hw`` and ``Z`` spanning the source slice
        indices from the first to the last slice holding the class (gaps empty); ``n_slices`` counts the
        slices that hold it.
    """
    positions = [int(i) for i in meta["slice_indices"]]
    valid_h, valid_w = (int(v) for v in meta["valid_hw"])
    per_class: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = {}
    for item in predictions:
        z = positions[item.slice]
        for obj, pred, gt in zip(item.objects, item.predicted, item.truth, strict=True):
            pred, gt = pred[:valid_h, :valid_w], gt[:valid_h, :valid_w]
            slices = per_class.setdefault(obj.class_name, {})
            if z in slices:
                old_pred, old_gt = slices[z]
                slices[z] = (old_pred | pred, old_gt | gt)
            else:
                slices[z] = (pred.astype(bool, copy=True), gt.astype(bool, copy=True))
    volumes = {}
    for name, slices in per_class.items():
        z0, z1 = min(slices), max(slices)
        predicted = np.zeros((z1 - z0 + 1, valid_h, valid_w), dtype=bool)
        truth = np.zeros_like(predicted)
        for z, (pred, gt) in slices.items():
            predicted[z - z0], truth[z - z0] = pred, gt
        volumes[name] = (predicted, truth, len(slices))
    return volumes


def score_case_volumes(
    prepared: CaseMeta, case_id: str, predictions: Sequence[SlicePrediction], nsd_tolerance_mm: float = 2.0
) -> list[dict]:
    """3D rows of one case: ``case_id, class, n_slices, voxels`` (true voxels) and Dice / IoU / NSD / HD95 (mm).

    Returns no rows for a 2D case (``meta["axis"] == "2d"``).
    """
    meta = prepared.meta(case_id)
    if meta.get("axis") == "2d":
        return []
    spacing = volume_spacing(meta)
    rows = []
    for name, (predicted, truth, n_slices) in stack_class_volumes(meta, predictions).items():
        scores = segmentation_scores(predicted, truth, spacing=spacing, nsd_tolerance_mm=nsd_tolerance_mm)
        rows.append({"case_id": case_id, "class": name, "n_slices": n_slices,
                     "voxels": int(np.count_nonzero(truth)), **scores})
    return rows


def score_volumes(
    prepared: CaseMeta, predictions: Iterable[SlicePrediction], nsd_tolerance_mm: float = 2.0
) -> list[dict]:
    """3D rows, one per (case, class), of the predictions of one split (see the module docstring).

    Args:
        prepared: the :class:`~samadapt.data.prepared.PreparedDataset` the predictions come from.
        predictions: :class:`SlicePrediction` items, e.g. from
            :func:`~samadapt.evaluation.box_protocol.predict_with_boxes`; grouped by case here.
        nsd_tolerance_mm: boundary tolerance of the normalized surface Dice.

    Returns:
        Rows ``{"case_id", "class", "n_slices", "voxels", "dice", "iou", "nsd", "hd95"}`` in case order,
        then first-seen class order.
    """
    by_case: dict[str, list[SlicePrediction]] = {}
    for item in predictions:
        by_case.setdefault(item.case_id, []).append(item)
    rows = []
    for case_id, items in by_case.items():
        rows += score_case_volumes(prepared, case_id, items, nsd_tolerance_mm)
    return rows
