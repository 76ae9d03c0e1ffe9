"""Box-prompt perturbation for fine-tuning: how far a simulated annotator's box strays, by object type.

Boxes are ``Nx4`` float XYXY in model-input pixels (inclusive last pixel, as :mod:`samadapt.prompts.boxes`).
Organs and lesions get their own ranges: a 5 px error is nothing on a liver and most of a small lesion,
so each range is also capped at a fraction of the box's side. The moves themselves are those of
:mod:`samadapt.prompts.boxes` (:func:`~samadapt.prompts.boxes.grow_boxes`,
:func:`~samadapt.prompts.boxes.jitter_boxes_sam`), which PHPG's simulated users
(:mod:`samadapt.prompts.box_behaviours`) use too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from samadapt.prompts.boxes import grow_boxes, jitter_boxes_sam, keep_in_frame
from samadapt.settings import check_choices, check_numbers, setting_error

BOX_NOISE_STYLES = ("mixed", "medsam", "sam", "none")


@dataclass(frozen=True)
class BoxNoise:
    """A box perturbation: the ``box_noise`` settings group of ``samadapt train`` (``--set box_noise.style=sam``).

    ``medsam``: each side moves *outward* by U(0, shift) pixels (MedSAM's 0-20 px at 1024). ``sam``: each
    coordinate gets N(0, ``sam_std`` x side) noise, capped at the shift (SAM's 10% std, 20 px at 1024), so
    boxes also shrink and cut the object. ``mixed`` (the default): each box draws one of the two with
    probability 1/2, so training sees loose boxes and boxes that cut the object, as users draw them (issue
    21: models trained on outward shifts alone lost more Dice to two-way box jitter than the zero-shot model).
    The shift is ``organ_shift_px`` or ``lesion_shift_px`` (model-frame pixels; lesions are the run's
    ``lesion_classes``), capped at ``max_fraction`` x the box side. PHPG draws its boxes from its behaviours
    instead.
    """

    style: str = "mixed"
    organ_shift_px: float = 5.0
    lesion_shift_px: float = 2.0
    max_fraction: float = 0.25
    sam_std: float = 0.1

    def __post_init__(self) -> None:
        bad = setting_error("box_noise")
        check_choices(self, {"style": BOX_NOISE_STYLES}, bad)
        check_numbers(self, ("organ_shift_px", "lesion_shift_px", "max_fraction", "sam_std"), bad)

    def shift_limits(self, boxes: torch.Tensor, is_lesion: torch.Tensor) -> torch.Tensor:
        """Per-box shift limit ``Nx1`` in pixels: the type's range, capped by ``max_fraction`` of the side."""
        side = torch.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]).clamp(min=1.0)
        by_type = torch.where(is_lesion, torch.tensor(self.lesion_shift_px), torch.tensor(self.organ_shift_px))
        return torch.minimum(by_type.to(side.dtype), self.max_fraction * side)[:, None]

    def __call__(
        self, boxes: torch.Tensor, is_lesion: torch.Tensor, generator: torch.Generator, image_size: int
    ) -> torch.Tensor:
        """Perturb ``Nx4`` boxes (``is_lesion``: ``N`` bool); results stay inside the ``image_size`` frame."""
        if self.style == "none" or boxes.shape[0] == 0:
            return boxes
        limit = self.shift_limits(boxes, is_lesion)
        if self.style == "medsam":
            return self._outward(boxes, limit, generator, image_size)
        if self.style == "sam":
            return self._two_way(boxes, is_lesion, limit, generator, image_size)
        outward = self._outward(boxes, limit, generator, image_size)
        two_way = self._two_way(boxes, is_lesion, limit, generator, image_size)
        pick_outward = torch.rand(boxes.shape[0], generator=generator) < 0.5
        return torch.where(pick_outward[:, None], outward, two_way)

    @staticmethod
    def _outward(boxes: torch.Tensor, limit: torch.Tensor, generator: torch.Generator, image_size: int) -> torch.Tensor:
        """MedSAM's noise: every side moves outward by U(0, ``limit``) (``limit``: ``Nx1`` px)."""
        # an outward move never collapses a box: clamping it to the frame is enough
        return grow_boxes(boxes, torch.rand(boxes.shape, generator=generator) * limit).clamp(0, image_size - 1)

    def _two_way(
        self, boxes: torch.Tensor, is_lesion: torch.Tensor, limit: torch.Tensor, generator: torch.Generator,
        image_size: int,
    ) -> torch.Tensor:
        """SAM's noise: every coordinate moves by N(0, ``sam_std`` x side), capped per box at ``limit``."""
        noisy = torch.empty_like(boxes)
        for rows in (is_lesion, ~is_lesion):  # SAM's noise, capped per box at its own limit
            if rows.any():
                cap = float(limit[rows].max())
                moved = jitter_boxes_sam(boxes[rows], generator, image_size, self.sam_std, max_shift=cap)
                delta = (moved - boxes[rows]).clamp(-limit[rows], limit[rows])
                noisy[rows] = boxes[rows] + delta
        return keep_in_frame(noisy, image_size, image_size)
