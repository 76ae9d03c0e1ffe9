"""Sets of ground-truth click prompts per mask: P positive clicks inside it, Q negative clicks around it.

ProMISe trains and evaluates its prompted modes with 8 positive and 8 negative points sampled from the
ground truth. Positives are distinct pixels drawn uniformly from the mask. Negatives are drawn uniformly
from the pixels *near* the object and outside it: inside the object's box widened by ``margin`` times its
side on every side, minus the mask, within the valid (unpadded) image region. Clicks far away from the
object say little (a user clicks where the model might spill over); when that ring is empty the whole
valid region outside the mask is used. A region with fewer pixels than clicks is sampled with replacement.

Points are ``NxPx2`` float XY at pixel centres (``+0.5``, as :func:`samadapt.prompts.points.sample_points_in_masks`)
in the masks' frame (model-input pixels for prepared data); labels ``NxP`` long, positives first
(1 positive, 0 negative), the layout ProMISe's APM uses too.
"""

from __future__ import annotations

import torch


def fixed_point_labels(n_positive: int, n_negative: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``P`` long labels: ``n_positive`` ones then ``n_negative`` zeros."""
    return torch.cat([torch.ones(n_positive, dtype=torch.long, device=device),
                      torch.zeros(n_negative, dtype=torch.long, device=device)])


def _draw(region: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` flat pixel indices of the ``H*W`` bool ``region`` (distinct when it has enough pixels; an
    empty region stands for the whole frame)."""
    candidates = region.nonzero().flatten()
    if candidates.numel() == 0:
        candidates = torch.arange(region.numel())
    if candidates.numel() >= count:
        return candidates[torch.randperm(candidates.numel(), generator=generator)[:count]]
    return candidates[torch.randint(candidates.numel(), (count,), generator=generator)]


def negative_regions(masks: torch.Tensor, margin: float, valid_hw: tuple[int, int] | None = None) -> torch.Tensor:
    """``NxHxW`` bool: where the negative clicks of each mask are drawn (see the module docstring)."""
    n, h, w = masks.shape
    valid = torch.zeros((h, w), dtype=torch.bool, device=masks.device)
    vh, vw = valid_hw if valid_hw is not None else (h, w)
    valid[:vh, :vw] = True
    ys = torch.arange(h, device=masks.device).view(1, h, 1)
    xs = torch.arange(w, device=masks.device).view(1, 1, w)
    rows, cols = masks.any(dim=2), masks.any(dim=1)
    big = torch.tensor(10**6, device=masks.device)
    idx_h, idx_w = torch.arange(h, device=masks.device), torch.arange(w, device=masks.device)
    y0 = torch.where(rows, idx_h, big).min(dim=1).values.float()
    y1 = torch.where(rows, idx_h, -big).max(dim=1).values.float()
    x0 = torch.where(cols, idx_w, big).min(dim=1).values.float()
    x1 = torch.where(cols, idx_w, -big).max(dim=1).values.float()
    mx, my = margin * (x1 - x0 + 1), margin * (y1 - y0 + 1)
    near = ((xs >= (x0 - mx).view(-1, 1, 1)) & (xs <= (x1 + mx).view(-1, 1, 1))
            & (ys >= (y0 - my).view(-1, 1, 1)) & (ys <= (y1 + my).view(-1, 1, 1)))
    outside = ~masks & valid
    ring = near & outside
    empty_ring = ~ring.flatten(1).any(dim=1)
    return torch.where(empty_ring.view(-1, 1, 1), outside, ring)


def sample_point_sets(
    masks: torch.Tensor,
    n_positive: int,
    n_negative: int,
    generator: torch.Generator,
    valid_hw: tuple[int, int] | None = None,
    margin: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground-truth click sets: ``n_positive`` clicks in each mask, ``n_negative`` near and outside it.

    Args:
        masks: ``NxHxW`` bool, non-empty (an empty mask gets clicks anywhere in the image).
        generator: the only randomness (CPU generator; the draws happen on the CPU).
        valid_hw: unpadded ``(h, w)`` of the frame; negatives stay inside it.
        margin: how far around the object's box negatives may lie, as a fraction of the box side.
    Returns:
        points ``Nx(P+Q)x2`` float XY at pixel centres, labels ``Nx(P+Q)`` long (positives first).
    """
    masks = masks.bool().cpu()
    n, h, w = masks.shape
    negatives = negative_regions(masks, margin, valid_hw)
    flat_pos, flat_neg = masks.reshape(n, -1), negatives.reshape(n, -1)
    chosen = []
    for i in range(n):
        parts = []
        if n_positive:
            parts.append(_draw(flat_pos[i], n_positive, generator))
        if n_negative:
            parts.append(_draw(flat_neg[i], n_negative, generator))
        chosen.append(torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long))
    flat = torch.stack(chosen) if chosen else torch.zeros((0, n_positive + n_negative), dtype=torch.long)
    points = torch.stack([(flat % w).float() + 0.5, (flat // w).float() + 0.5], dim=-1)
    labels = fixed_point_labels(n_positive, n_negative).expand(n, -1).clone()
    return points, labels
