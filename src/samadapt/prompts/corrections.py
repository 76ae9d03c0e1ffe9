"""Correction clicks: where a user clicks next, given the current mask and the truth (or an error estimate).

- :class:`LargestErrorClick` (RITM / SimpleClick): the false-negative and false-positive regions are split
  into 8-connected components; the user clicks the interior maximum of the distance transform of the
  largest one (by area), positive in a false negative, negative in a false positive. RITM's own code compares
  the distance maxima of the whole false-negative and false-positive masks; the area of the largest component
  is the issue's and METHODS.md's "largest error region", and the two agree except on thin error slivers.
- :class:`RandomErrorClick` (SAM's training recipe): a uniformly random pixel of the error region
  (:func:`samadapt.prompts.points.sample_error_clicks`).
- Error-guided: both take an optional ``guide`` map (``NxHxW`` bool, e.g. the thresholded prediction of the
  :mod:`~samadapt.models.error_head`) for the regions flagged in ``use_guide``. The click is then placed in
  the guide instead of the true error, by the same rule, and its label still comes from the truth at the
  clicked pixel (the user looks where the model points and answers truthfully). An empty guide falls back
  to the true error.
- :func:`suggested_clicks`: the GT-free version for inference: the click a model's own error estimate
  suggests, labelled against the current mask (a suspected miss inside the mask -> negative).

Masks are ``NxHxW`` bool in one frame (model-input pixels); clicks are ``Nx2`` float XY at pixel centres and
``N`` long labels, one per region. Regions without any error get a positive click at the interior of the
truth (a harmless confirmation), as SAM's recipe does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from samadapt.prompts.mask_geometry import interior_points, largest_component, value_at
from samadapt.prompts.points import sample_error_clicks, sample_points_in_masks


def largest_error_region(prediction: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The largest connected error component of each mask: (``NxHxW`` bool, ``N`` bool: it is a false negative).

    False negatives (``target & ~prediction``) and false positives (``prediction & ~target``) are split
    into components separately; the larger of the two largest wins (a tie goes to the false negative).
    """
    prediction, target = prediction.cpu().bool(), target.cpu().bool()
    missed, missed_area = largest_component(target & ~prediction)
    spilled, spilled_area = largest_component(prediction & ~target)
    positive = missed_area >= spilled_area
    return torch.where(positive[:, None, None], missed, spilled), positive


def _guided(guide: torch.Tensor | None, use_guide: torch.Tensor | None, n: int) -> torch.Tensor:
    """Rows to place by the guide: flagged and with a non-empty guide."""
    if guide is None or use_guide is None:
        return torch.zeros(n, dtype=torch.bool)
    return use_guide.cpu().bool() & guide.cpu().bool().flatten(1).any(dim=1)


@dataclass(frozen=True)
class LargestErrorClick:
    """RITM's simulated user (see the module docstring); deterministic."""

    name: str = "largest_error"

    def __call__(self, prediction: torch.Tensor, target: torch.Tensor, generator: torch.Generator,
                 guide: torch.Tensor | None = None, use_guide: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        prediction, target = prediction.cpu().bool(), target.cpu().bool()
        region, positive = largest_error_region(prediction, target)
        has_error = region.flatten(1).any(dim=1)
        region = torch.where(has_error[:, None, None], region, target)
        labels = torch.where(has_error, positive.long(), torch.ones_like(positive, dtype=torch.long))
        guided = _guided(guide, use_guide, target.shape[0])
        if guided.any():
            region[guided] = largest_component(guide.cpu().bool()[guided])[0]
        points = interior_points(region)
        if guided.any():
            labels[guided] = value_at(target[guided], points[guided]).long()
        return points, labels


@dataclass(frozen=True)
class RandomErrorClick:
    """SAM's simulated user: a uniformly random error pixel (see the module docstring)."""

    name: str = "random_error"

    def __call__(self, prediction: torch.Tensor, target: torch.Tensor, generator: torch.Generator,
                 guide: torch.Tensor | None = None, use_guide: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        prediction, target = prediction.cpu().bool(), target.cpu().bool()
        points, labels = sample_error_clicks(prediction, target, generator)
        guided = _guided(guide, use_guide, target.shape[0])
        if guided.any():
            points[guided] = sample_points_in_masks(guide.cpu().bool()[guided], generator)
            labels[guided] = value_at(target[guided], points[guided]).long()
        return points, labels


def previous_logits_prompt(low_res_logits: torch.Tensor) -> torch.Tensor:
    """The mask prompt of the next round: the current low-res logits ``Nx4gx4g`` (or ``Nx1x4gx4g``) as
    ``Nx1x4gx4g``, detached (SAM feeds its previous logits back without gradient)."""
    logits = low_res_logits.detach()
    return logits if logits.dim() == 4 else logits[:, None]


def suggested_clicks(
    error_probability: torch.Tensor, prediction: torch.Tensor, threshold: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """The next click an error estimate suggests, without ground truth.

    Args:
        error_probability: ``NxHxW`` float in [0, 1], the estimated probability that each pixel of the
            current mask is wrong (same frame as ``prediction``).
        prediction: ``NxHxW`` bool current masks.
        threshold: pixels above it form the suspected error; the click goes to the interior of its largest
            component (where none is above, to the single most suspect pixel).
    Returns:
        points ``Nx2`` XY and labels ``N``: 0 (negative) where the click falls inside the current mask (a
        suspected false positive), 1 where it falls outside (a suspected miss).
    """
    probability = error_probability.detach().float().cpu()
    suspect = probability > threshold
    region, area = largest_component(suspect)
    n, h, w = probability.shape
    flat = probability.reshape(n, -1).argmax(dim=1)
    single = torch.zeros(n, h * w, dtype=torch.bool)
    single[torch.arange(n), flat] = True
    region = torch.where((area > 0)[:, None, None], region, single.reshape(n, h, w))
    points = interior_points(region)
    labels = (~value_at(prediction.cpu().bool(), points)).long()
    return points, labels
