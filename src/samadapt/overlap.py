"""Dice and IoU of binary masks: the one implementation, with one rule for empty masks.

    Dice = 2|P∩G| / (|P| + |G|)        IoU = |P∩G| / |P∪G|

**Empty masks.** When prediction and reference are both empty, Dice and IoU are **1** (nothing to find and
nothing found: the usual convention of segmentation evaluation, which :mod:`samadapt.evaluation.metrics`
extends to NSD and HD95); when exactly one is empty, the formulas give 0. Every Dice and IoU of samadapt comes
from here: the evaluation metrics and protocols, training's IoU targets
(:func:`samadapt.training.losses.mask_iou`), ProMISe's validation score and the overlap test of key-slice
propagation (which stops on an empty mask before it asks for an IoU; see :mod:`samadapt.inference.propagation`).

Two forms: :func:`dice_iou` scores a batch of torch masks at once; :func:`dice` and :func:`iou` score one
pair of numpy masks, 2D ``(H, W)`` or 3D ``(Z, Y, X)``.
"""

from __future__ import annotations

import numpy as np
import torch


def _scores(intersection: torch.Tensor, total: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dice and IoU from voxel counts (``total = |P| + |G|``), with the empty-mask rule."""
    union = total - intersection
    empty = total == 0
    return (torch.where(empty, 1.0, 2 * intersection / total.clamp(min=1)),
            torch.where(empty, 1.0, intersection / union.clamp(min=1)))


def dice_iou(prediction: torch.Tensor, truth: torch.Tensor, dims: int = 2,
             dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Dice and IoU of every mask of ``prediction`` against the same mask of ``truth``.

    Args:
        prediction, truth: bool tensors of one shape ``(..., *grid)``; the last ``dims`` axes are a mask's
            grid (``dims=2``: ``HxW`` masks, e.g. ``BxNxHxW`` gives ``BxN`` scores).
        dtype: of the scores (counts are exact in float32 up to 2^24 pixels per mask).

    Returns:
        ``(dice, iou)``, each of shape ``(...)``.
    """
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and reference {tuple(truth.shape)} must have the "
                         "same shape")
    prediction, truth = prediction.bool(), truth.bool()
    grid = tuple(range(-dims, 0))
    intersection = (prediction & truth).sum(grid).to(dtype)
    total = prediction.sum(grid).to(dtype) + truth.sum(grid).to(dtype)
    return _scores(intersection, total)


def check_masks(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``pred`` and ``gt`` as bool arrays; ``ValueError`` unless they share one 2D or 3D shape."""
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and reference {gt.shape} must have the same shape")
    if pred.ndim not in (2, 3):
        raise ValueError(f"masks must be 2D (H, W) or 3D (Z, Y, X), got {pred.ndim} dimensions")
    return pred, gt


def _pair_scores(pred: np.ndarray, gt: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    pred, gt = check_masks(pred, gt)
    counts = torch.tensor([np.count_nonzero(pred & gt), np.count_nonzero(pred) + np.count_nonzero(gt)],
                          dtype=torch.float64)
    return _scores(counts[0], counts[1])


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice of two bool masks of one 2D or 3D shape; 1 when both are empty."""
    return float(_pair_scores(pred, gt)[0])


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Intersection over union of two bool masks of one 2D or 3D shape; 1 when both are empty."""
    return float(_pair_scores(pred, gt)[1])
