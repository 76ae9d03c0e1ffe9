"""Click prompts as different people give them: centre, anywhere inside, near the edge, several, or a negative
click on the structure next door.

Same calling convention as :mod:`samadapt.prompts.box_behaviours`: ``behaviour(masks, generator,
slice_masks=None) -> RegionPrompts`` on ``NxHxW`` bool masks (model-input pixels), clicks ``NxPx2`` XY at
pixel centres with labels ``NxP`` (1 positive, 0 negative, -1 padding where regions hold fewer clicks).
Distances are in pixels, from :func:`~samadapt.prompts.mask_geometry.distance_inside`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from samadapt.prompts.mask_geometry import distance_inside, distance_outside, interior_points, nearest_neighbours
from samadapt.prompts.points import sample_points_in_masks
from samadapt.prompts.region_prompts import RegionPrompts


def _single(points: torch.Tensor, label: int = 1) -> RegionPrompts:
    return RegionPrompts.from_points(points[:, None], torch.full((points.shape[0], 1), label, dtype=torch.long))


@dataclass(frozen=True)
class CentreClick:
    """One positive click at the interior maximum of the distance transform (the pixel farthest from the
    boundary): the click of a careful user, and RITM's first simulated click. Deterministic."""

    name: str = "click_centre"

    def __call__(self, masks: torch.Tensor, generator: torch.Generator,
                 slice_masks: torch.Tensor | None = None) -> RegionPrompts:
        return _single(interior_points(masks.cpu()))


@dataclass(frozen=True)
class RandomClick:
    """One positive click on a uniformly random pixel of the object (SAM's first-click simulation)."""

    name: str = "click_random"

    def __call__(self, masks: torch.Tensor, generator: torch.Generator,
                 slice_masks: torch.Tensor | None = None) -> RegionPrompts:
        return _single(sample_points_in_masks(masks.cpu().bool(), generator))


@dataclass(frozen=True)
class BoundaryClick:
    """One positive click inside the object but near its edge: a uniformly random foreground pixel whose
    distance to the boundary is at most ``max(1, band x d_max)``, ``d_max`` the object's largest distance (an
    off-centre click, as a hurried user gives)."""

    band: float = 0.25
    name: str = "click_boundary"

    def __post_init__(self) -> None:
        if not 0 <= self.band <= 1:
            raise ValueError(f"band={self.band:g}: use a fraction between 0 and 1")

    def __call__(self, masks: torch.Tensor, generator: torch.Generator,
                 slice_masks: torch.Tensor | None = None) -> RegionPrompts:
        distance = distance_inside(masks.cpu())
        deepest = distance.flatten(1).max(dim=1).values
        limit = torch.clamp(self.band * deepest, min=1.0)
        near_edge = (distance > 0) & (distance <= limit[:, None, None])
        return _single(sample_points_in_masks(near_edge, generator))


@dataclass(frozen=True)
class MultiClick:
    """``k ~ U{count}`` positive clicks on distinct random pixels of the object (fewer if it is smaller):
    a user who clicks a few times before looking. Regions with fewer clicks are padded with label -1."""

    count: tuple[int, int] = (2, 5)
    name: str = "click_multi"

    def __post_init__(self) -> None:
        if not 1 <= self.count[0] <= self.count[1]:
            raise ValueError(f"count={self.count}: use 1 <= low <= high")

    def __call__(self, masks: torch.Tensor, generator: torch.Generator,
                 slice_masks: torch.Tensor | None = None) -> RegionPrompts:
        masks = masks.cpu().bool()
        n, h, w = masks.shape
        k = torch.randint(self.count[0], self.count[1] + 1, (n,), generator=generator)
        flat = masks.reshape(n, -1)
        scores = torch.rand(n, h * w, generator=generator) * flat  # distinct random foreground pixels
        top = scores.topk(self.count[1], dim=1)
        keep = (torch.arange(self.count[1])[None] < k[:, None]) & (top.values > 0)
        keep[:, 0] = True  # at least one click (the image centre for an empty mask, as sample_points_in_masks)
        pixel = torch.where(top.values[:, :1] > 0, top.indices[:, :1], torch.full((n, 1), (h // 2) * w + w // 2))
        index = torch.cat([pixel, top.indices[:, 1:]], dim=1)
        points = torch.stack([(index % w).float() + 0.5, (index // w).float() + 0.5], dim=2)
        labels = torch.where(keep, 1, -1)
        return RegionPrompts.from_points(points, labels)


@dataclass(frozen=True)
class NegativeNeighbourClick:
    """A positive click at the object's centre plus a negative click on the adjacent structure: a user who
    keeps the neighbouring organ out from the start.

    The negative click is a random pixel of the nearest neighbour
    (:func:`~samadapt.prompts.mask_geometry.nearest_neighbours`) among those within ``gap + reach x s`` of the
    object (``gap`` the distance between them, ``s`` the object's largest interior distance): the part of the
    neighbour a model would spill into. Without a neighbour it lands on the background ring within
    ``reach x s`` (at least 2 px) outside the object.
    """

    reach: float = 1.0
    name: str = "click_negative"

    def __call__(self, masks: torch.Tensor, generator: torch.Generator,
                 slice_masks: torch.Tensor | None = None) -> RegionPrompts:
        masks = masks.cpu().bool()
        n = masks.shape[0]
        positive = interior_points(masks)
        scale = distance_inside(masks).flatten(1).max(dim=1).values.clamp(min=1.0)
        gap = distance_outside(masks)
        if slice_masks is None:
            neighbour = torch.zeros_like(masks)
        else:
            neighbour = nearest_neighbours(masks, slice_masks, gap)
        has = neighbour.flatten(1).any(dim=1)
        inf = torch.tensor(float("inf"))
        closest = torch.where(neighbour, gap, inf).flatten(1).min(dim=1).values
        near_part = neighbour & (gap <= torch.where(has, closest, 0.0)[:, None, None]
                                 + self.reach * scale[:, None, None])
        ring = ~masks & (gap <= torch.clamp(self.reach * scale, min=2.0)[:, None, None])
        region = torch.where(has[:, None, None], near_part, ring)
        negative = sample_points_in_masks(region, generator)
        points = torch.stack([positive, negative], dim=1)
        labels = torch.tensor([[1, 0]]).expand(n, 2).clone()
        return RegionPrompts.from_points(points, labels)
