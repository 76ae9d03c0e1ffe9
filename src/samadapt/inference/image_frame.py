"""Coordinates between an original 2D image and SAM's model frame, for prompts in and masks out.

Frames (see :mod:`samadapt.data.frame`):

- *original frame*: the ``h x w`` image as the caller has it (for volumes: one slice, display-oriented as
  ``samadapt prepare`` orients it). Coordinates are XY pixel positions, ``x`` = column and ``y`` = row,
  with pixel ``(row r, col c)`` centred on ``(c, r)``: the convention of ``SamPredictor`` and of
  :func:`~samadapt.prompts.boxes.boxes_from_masks` (a tight box's ``x1, y1`` is its last pixel).
- *model frame*: ``S x S`` (``S = spec.image_size``); the image is resized so that its longest side is
  ``S`` and padded bottom/right (exactly ``samadapt prepare``'s :func:`~samadapt.data.frame.to_model_frame_image`).
  Prompt coordinates are scaled by ``w'/w`` and ``h'/h`` (``(h', w') = frame_shape(h, w, S)``), as
  ``ResizeLongestSide.apply_coords`` does; padding adds no offset.
- *low-res frame*: the decoder's ``4g x 4g`` logits over the whole model frame (padding included).

Masks go back with ``Sam.postprocess_masks``: logits upscaled to ``S x S``, the valid region
``[:h', :w']`` cropped, resized bilinearly to ``h x w``, thresholded at 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide

from samadapt.data.frame import frame_shape
from samadapt.errors import PromptError


@dataclass(frozen=True)
class ImageFrame:
    """An ``original_hw`` image placed into a model frame of side ``image_size``."""

    original_hw: tuple[int, int]
    image_size: int

    @property
    def valid_hw(self) -> tuple[int, int]:
        """``(h', w')``: the unpadded region of the model frame."""
        return frame_shape(*self.original_hw, self.image_size)

    def _check_inside(self, xy: np.ndarray, what: str) -> None:
        h, w = self.original_hw
        if not np.isfinite(xy).all():
            raise PromptError(f"{what} holds NaN or infinite coordinates; give finite pixel positions")
        x, y = xy[..., 0], xy[..., 1]
        if x.size and (x.min() < -0.5 or y.min() < -0.5 or x.max() > w - 0.5 or y.max() > h - 0.5):
            raise PromptError(f"{what} reaches outside the {w}x{h} (width x height) image; give pixel "
                              f"positions with 0 <= x <= {w - 1} and 0 <= y <= {h - 1}")

    def points_to_model(self, points: np.ndarray) -> np.ndarray:
        """``...x2`` XY original pixels -> ``...x2`` float32 XY model-input pixels."""
        points = np.asarray(points, dtype=np.float64)
        self._check_inside(points, "point prompt")
        transform = ResizeLongestSide(self.image_size)
        return transform.apply_coords(points.copy(), self.original_hw).astype(np.float32)

    def boxes_to_model(self, boxes: np.ndarray) -> np.ndarray:
        """``Nx4`` XYXY original pixels -> ``Nx4`` float32 XYXY model-input pixels (corners checked)."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if (boxes[:, 2] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 1]).any():
            raise PromptError("box prompt has x1 < x0 or y1 < y0; give boxes as [x0, y0, x1, y1]")
        return self.points_to_model(boxes.reshape(-1, 2, 2)).reshape(-1, 4)

    def points_to_original(self, points: np.ndarray) -> np.ndarray:
        """``...x2`` XY model-input pixels -> XY original pixels (inverse of :meth:`points_to_model`)."""
        new_h, new_w = self.valid_hw
        h, w = self.original_hw
        scale = np.array([w / new_w, h / new_h], dtype=np.float64)
        return (np.asarray(points, dtype=np.float64) * scale).astype(np.float32)

    def logits_to_original(self, sam: Sam, low_res: torch.Tensor) -> torch.Tensor:
        """``NxKx4gx4g`` low-res logits -> ``NxKxhxw`` logits in the original frame (``Sam.postprocess_masks``)."""
        return sam.postprocess_masks(low_res, self.valid_hw, self.original_hw)
