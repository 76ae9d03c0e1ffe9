"""Box prompts as different people draw them: tight, loose, shifted, partial, noisy, or around a neighbour too.

Each behaviour is a small frozen dataclass with named parameters, called on a batch of masks at once:
``behaviour(masks, generator, slice_masks=None) -> RegionPrompts`` with one box per region. ``masks`` are
``NxHxW`` bool in model-input pixels (the square frame of prepared data), ``slice_masks`` ``MxHxW`` every
object of the slice (only :class:`NeighbourBox` needs them); the only randomness is ``generator``. Boxes are
``Nx4`` float XYXY, inclusive last pixel, moved and clamped to the frame by :mod:`samadapt.prompts.boxes`'s
perturbations (as fine-tuning's :class:`~samadapt.prompts.box_noise.BoxNoise`). Sizes
are relative to each object's own box (``w = x1 - x0``, ``h = y1 - y0``), so a margin means the same on a
liver and on a lesion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from samadapt.prompts.boxes import boxes_from_masks, grow_boxes, jitter_boxes_sam, keep_in_frame
from samadapt.prompts.mask_geometry import distance_outside, nearest_neighbours
from samadapt.prompts.region_prompts import RegionPrompts


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def _sides(boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=1.0), (boxes[:, 3] - boxes[:, 1]).clamp(min=1.0)


def _check_range(name: str, low: float, high: float, upper: float | None = None) -> None:
    if not 0 <= low <= high or (upper is not None and high >= upper):
        limit = f" < {upper:g}" if upper is not None else ""
        raise ValueError(f"{name}=({low:g}, {high:g}): use 0 <= low <= high{limit}")


@dataclass(frozen=True)
class TightBox:
    """The tight box of the mask: a careful annotator."""

    name: str = "box_tight"

    def __call__(self, masks: torch.Tensor, generator: torch.Generator,
                 slice_masks: torch.Tensor | None = None) -> RegionPrompts:
        return RegionPrompts.from_boxes(boxes_from_masks(masks.cpu()))


@dataclass(frozen=True)
class LooseBox:
    """Every side moves outward by U(``margin``) x the box's extent along that axis: a generous annotator.

    The result always contains the tight box.
    """

    margin: tuple[float, float] = (0.05, 0.25)
    name: str = "box_loose"

    def __post_init__(self) -> None:
        _check_range("margin", *self.margin)

    def __call__(self, masks: torch.Tensor, generator: torch.Generator,
                 slice_masks: torch.Tensor | None = None) -> RegionPrompts:
        boxes = boxes_from_masks(masks.cpu())
        w, h = _sides(boxes)
        n = boxes.shape[0]
        grow = torch.rand(n, 4, generator=generator) * (self.margin[1] - self.margin[0]) + self.margin[0]
        extent = torch.stack([w, h, w, h], dim=1)
        return RegionPrompts.from_boxes(keep_in_frame(grow_boxes(boxes, grow * extent), *masks.shape[-2:]))


@dataclass(frozen=True)
class ShiftedBox:
    """The tight box, translated: by ``m x w`` along x and ``m x h`` along y in a random direction, with
    ``m ~ U(shift)`` (a box drawn a little off). Size is kept unless the frame clips it; with ``shift < 1``
    the box still overlaps the object."""

    shift: tuple[float, float] = (0.1, 0.3)
    name: str = "box_shifted"

    def __post_init__(self) -> None:
        _check_range("shift", *self.shift, upper=1.0)

    def __call__(self, masks: torch.Tensor, generator: torch.Generator,
                 slice_masks: torch.Tensor | None = None) -> RegionPrompts:
        boxes = boxes_from_masks(masks.cpu())
        w, h = _sides(boxes)
        n = boxes.shape[0]
        size = _uniform(n, *self.shift, generator)
        angle = torch.rand(n, generator=generator) * 2 * math.pi
        dx, dy = size * angle.cos() * w, size * angle.sin() * h
        moved = boxes + torch.stack([dx, dy, dx, dy], dim=1)
        return RegionPrompts.from_boxes(keep_in_frame(moved, *masks.shape[-2:]))


@dataclass(frozen=True)
class PartialBox:
    """One side of the tight box (chosen at random) moves inward by U(``cut``) x the box's extent along that
    axis: a box that cuts off part of the object (an annotator who missed a thin end of an organ)."""

    cut: tuple[float, float] = (0.15, 0.35)
    name: str = "box_partial"

    def __post_init__(self) -> None:
        _check_range("cut", *self.cut, upper=1.0)

    def __call__(self, masks: torch.Tensor, generator: torch.Generator,
                 slice_masks: torch.Tensor | None = None) -> RegionPrompts:
        boxes = boxes_from_masks(masks.cpu())
        w, h = _sides(boxes)
        n = boxes.shape[0]
        side = torch.randint(0, 4, (n,), generator=generator)  # 0 left, 1 top, 2 right, 3 bottom
        amount = _uniform(n, *self.cut, generator) * torch.where(side % 2 == 0, w, h)
        amount = amount.clamp(min=1.0)  # at least one row or column of the object is left out
        direction = torch.tensor([1.0, 1.0, -1.0, -1.0])[side]
        moved = boxes.clone()
        rows = torch.arange(n)
        moved[rows, side] = boxes[rows, side] + direction * amount
        # keep a valid box inside the tight one: never past the opposite side
        moved[:, 0] = torch.minimum(moved[:, 0], boxes[:, 2] - 1).clamp(min=0)
        moved[:, 1] = torch.minimum(moved[:, 1], boxes[:, 3] - 1).clamp(min=0)
        moved[:, 2] = torch.maximum(moved[:, 2], moved[:, 0] + 1)
        moved[:, 3] = torch.maximum(moved[:, 3], moved[:, 1] + 1)
        return RegionPrompts.from_boxes(moved)


@dataclass(frozen=True)
class NoisyBox:
    """SAM's training box noise: each coordinate moves by N(0, ``std_fraction`` x side), capped at
    ``max_shift_px`` (default: SAM's 20 px of its 1024 frame, scaled to the masks' frame)."""

    std_fraction: float = 0.1
    max_shift_px: float | None = None
    name: str = "box_noisy"

    def __call__(self, masks: torch.Tensor, generator: torch.Generator,
                 slice_masks: torch.Tensor | None = None) -> RegionPrompts:
        size = masks.shape[-1]
        boxes = jitter_boxes_sam(boxes_from_masks(masks.cpu()), generator, size, self.std_fraction,
                                 self.max_shift_px)
        return RegionPrompts.from_boxes(boxes)


@dataclass(frozen=True)
class NeighbourBox:
    """A box around the object and part of its nearest neighbour (an annotator who could not tell where one
    organ ends and the next begins).

    The neighbour is the nearest other object of the slice that does not overlap this one
    (:func:`~samadapt.prompts.mask_geometry.nearest_neighbours`). The box encloses the object and the
    neighbour's pixels within ``gap + reach x s`` of the object, where ``gap`` is the distance between the
    two, ``s`` the object's shorter box side and ``reach ~ U(reach)``: always at least the neighbour's closest
    pixel. Without a neighbour (or ``slice_masks``) the region gets a :class:`LooseBox` instead.
    """

    reach: tuple[float, float] = (0.1, 0.5)
    fallback: LooseBox = LooseBox()
    name: str = "box_neighbour"

    def __post_init__(self) -> None:
        _check_range("reach", *self.reach)

    def __call__(self, masks: torch.Tensor, generator: torch.Generator,
                 slice_masks: torch.Tensor | None = None) -> RegionPrompts:
        masks = masks.cpu().bool()
        n = masks.shape[0]
        boxes = boxes_from_masks(masks)
        reach = _uniform(n, *self.reach, generator)
        fallback = self.fallback(masks, generator).boxes
        if slice_masks is None:
            return RegionPrompts.from_boxes(fallback)
        gap = distance_outside(masks)
        neighbour = nearest_neighbours(masks, slice_masks, gap)
        has = neighbour.flatten(1).any(dim=1)
        inf = torch.tensor(float("inf"))
        closest = torch.where(neighbour, gap, inf).flatten(1).min(dim=1).values
        w, h = _sides(boxes)
        limit = torch.where(has, closest + reach * torch.minimum(w, h), torch.zeros(n))
        part = neighbour & (gap <= limit[:, None, None])
        together = boxes_from_masks(masks | part)
        return RegionPrompts.from_boxes(torch.where(has[:, None], together, fallback))
