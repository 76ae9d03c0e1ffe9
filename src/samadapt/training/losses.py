"""Segmentation losses on mask logits, per mask (reduction left to the caller).

All functions take ``logits`` and ``targets`` of shape ``NxKxHxW`` (N prompts, K mask outputs) or
``NxHxW`` and return one value per mask (``NxK`` or ``N``), so objectives can take the minimum over
multimask outputs (SAM) or the maximum over prompts (multi-prompt fine-tuning).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from samadapt.overlap import dice_iou


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss (Lin et al.), mean over pixels; SAM's choice."""
    targets = targets.to(logits.dtype)
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss.flatten(-2).mean(-1)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice loss ``1 - (2|P.T| + eps) / (|P| + |T| + eps)`` on sigmoid probabilities."""
    prob = logits.sigmoid().flatten(-2)
    targets = targets.to(logits.dtype).flatten(-2)
    inter = (prob * targets).sum(-1)
    return 1 - (2 * inter + eps) / (prob.sum(-1) + targets.sum(-1) + eps)


def bce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with logits, mean over pixels."""
    return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none").flatten(-2).mean(-1)


def mask_iou(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """IoU (float32) of thresholded masks (logit > 0) with the targets, per ``HxW`` mask; empty-vs-empty counts 1
    (:func:`samadapt.overlap.dice_iou`)."""
    return dice_iou(logits > 0, targets.bool(), dtype=torch.float32)[1]


def iou_head_loss(iou_predictions: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """MSE between SAM's predicted IoU and the actual IoU of each mask (no gradient into the masks)."""
    return (iou_predictions - mask_iou(logits.detach(), targets)) ** 2
