"""The prompts of N regions decoded together, each region with its own kind of prompt.

SAM's prompt encoder takes one kind of prompt for a whole batch (all boxes, or all clicks). Human-behaviour
simulation gives region 1 a loose box, region 2 a centre click and region 3 three clicks, on the same
embedding and in the same decoder pass; :class:`RegionPrompts` holds such a mixed batch, and
:meth:`samadapt.models.decoder.SamDecoder.all_outputs` decodes it.

Frames: points and boxes in model-input pixels (the ``S x S`` frame of the masks they come from). Points
``NxPx2`` float XY; labels ``NxP`` long, 1 positive, 0 negative, -1 padding (SAM's "not a point"), so rows
may hold different numbers of clicks; boxes ``Nx4`` float XYXY, meaningful where ``has_box``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RegionPrompts:
    """Prompts of N regions (see the module docstring for shapes and frames)."""

    points: torch.Tensor
    labels: torch.Tensor
    boxes: torch.Tensor
    has_box: torch.Tensor

    def __post_init__(self) -> None:
        n = self.boxes.shape[0]
        if self.points.shape[:1] != (n,) or self.labels.shape != self.points.shape[:2] or self.has_box.shape != (n,):
            raise ValueError(f"region prompts disagree in shape: points {tuple(self.points.shape)}, labels "
                             f"{tuple(self.labels.shape)}, boxes {tuple(self.boxes.shape)}, "
                             f"has_box {tuple(self.has_box.shape)}")

    @classmethod
    def from_boxes(cls, boxes: torch.Tensor) -> RegionPrompts:
        """One box per region (``Nx4``), no clicks."""
        n = boxes.shape[0]
        return cls(torch.zeros(n, 0, 2), torch.zeros(n, 0, dtype=torch.long), boxes.float(),
                   torch.ones(n, dtype=torch.bool))

    @classmethod
    def from_points(cls, points: torch.Tensor, labels: torch.Tensor) -> RegionPrompts:
        """Clicks only: ``NxPx2`` points and ``NxP`` labels (-1 pads)."""
        n = points.shape[0]
        return cls(points.float(), labels.long(), torch.zeros(n, 4), torch.zeros(n, dtype=torch.bool))

    @classmethod
    def merge(cls, parts: Sequence[RegionPrompts], rows: Sequence[torch.Tensor], n: int) -> RegionPrompts:
        """Assemble ``n`` regions from ``parts``; part ``i`` holds the regions ``rows[i]`` (long indices).

        Click lists are padded to the longest with label -1.
        """
        width = max([p.points.shape[1] for p in parts], default=0)
        points = torch.zeros(n, width, 2)
        labels = torch.full((n, width), -1, dtype=torch.long)
        boxes = torch.zeros(n, 4)
        has_box = torch.zeros(n, dtype=torch.bool)
        for part, where in zip(parts, rows, strict=True):
            p = part.points.shape[1]
            points[where, :p] = part.points.cpu()
            labels[where, :p] = part.labels.cpu()
            boxes[where] = part.boxes.cpu()
            has_box[where] = part.has_box.cpu()
        return cls(points, labels, boxes, has_box)

    def __len__(self) -> int:
        return self.boxes.shape[0]

    @property
    def clicks(self) -> torch.Tensor:
        """Number of real (non-padding) clicks per region: ``N`` long."""
        return (self.labels >= 0).sum(dim=1)

    @property
    def ambiguous(self) -> torch.Tensor:
        """``N`` bool: a single click and no box, the prompt SAM answers with three masks (multimask)."""
        return (self.clicks == 1) & ~self.has_box

    def with_clicks(self, points: torch.Tensor, labels: torch.Tensor) -> RegionPrompts:
        """One more click per region (``Nx2`` XY, ``N`` labels; label -1 adds nothing to that region)."""
        device = self.points.device
        return RegionPrompts(torch.cat([self.points, points[:, None].to(device, torch.float32)], dim=1),
                             torch.cat([self.labels, labels[:, None].to(device, torch.long)], dim=1),
                             self.boxes, self.has_box)

    def select(self, rows: torch.Tensor) -> RegionPrompts:
        """The regions ``rows`` (long indices or bool mask)."""
        return RegionPrompts(self.points[rows], self.labels[rows], self.boxes[rows], self.has_box[rows])

    def to(self, device: torch.device | str) -> RegionPrompts:
        return RegionPrompts(self.points.to(device), self.labels.to(device), self.boxes.to(device),
                             self.has_box.to(device))
