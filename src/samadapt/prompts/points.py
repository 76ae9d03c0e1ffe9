"""Click prompts from masks and from the error of a prediction (SAM's interactive recipe).

Points are ``NxPx2`` float tensors, XY, in the pixel frame of the masks (model-input pixels for prepared
data); labels are ``NxP`` ints: 1 positive, 0 negative, -1 padding (SAM's "not a point").
"""

from __future__ import annotations

import torch


def sample_points_in_masks(masks: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One uniformly random pixel of each mask: ``NxHxW`` bool -> ``Nx2`` float XY (pixel centres).

    Empty masks give the image centre.
    """
    n, h, w = masks.shape
    scores = torch.rand((n, h * w), generator=generator, device=masks.device) * masks.reshape(n, -1)
    flat = scores.argmax(dim=1)
    empty = masks.reshape(n, -1).sum(dim=1) == 0
    flat = torch.where(empty, torch.full_like(flat, (h // 2) * w + w // 2), flat)
    return torch.stack([(flat % w).float() + 0.5, (flat // w).float() + 0.5], dim=1)


def sample_error_clicks(
    prediction: torch.Tensor, target: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM-style correction click: a uniformly random pixel of the error region.

    A false-negative pixel becomes a positive click, a false-positive pixel a negative one. Masks with
    no error get a positive click inside the target (a harmless confirmation).

    Args:
        prediction: ``NxHxW`` bool current masks.
        target: ``NxHxW`` bool ground truth.
    Returns:
        points ``Nx2`` float XY, labels ``N`` long.
    """
    error = prediction ^ target
    has_error = error.flatten(1).any(dim=1)
    region = torch.where(has_error[:, None, None], error, target)
    points = sample_points_in_masks(region, generator)
    w = target.shape[-1]
    x = points[:, 0].long().clamp(0, w - 1)
    y = points[:, 1].long().clamp(0, target.shape[-2] - 1)
    labels = target[torch.arange(target.shape[0], device=target.device), y, x].long()
    return points, labels
