"""Box prompts from masks, and the box perturbations every simulated annotator is built from.

Boxes are ``Nx4`` float tensors, XYXY, in the pixel frame of the masks they come from (for samadapt's
prepared data: model-input pixels). ``x1``/``y1`` are the last foreground column/row (inclusive), as SAM's
``batched_mask_to_box``.

The perturbations: :func:`grow_boxes` (sides outward), :func:`jitter_boxes_sam` (SAM's size-relative
noise), :func:`jitter_boxes_uniform` (the evaluation's bounded jitter), and :func:`keep_in_frame`, the one
rule that brings a moved box back into the frame with at least one pixel of width and height. Fine-tuning's
:class:`~samadapt.prompts.box_noise.BoxNoise` and the simulated users of
:mod:`~samadapt.prompts.box_behaviours` only decide *how much* to move (in pixels or as a share of the box);
the moving and clamping happen here.
"""

from __future__ import annotations

import torch
from segment_anything.utils.amg import batched_mask_to_box


def boxes_from_masks(masks: torch.Tensor) -> torch.Tensor:
    """Tight boxes of ``NxHxW`` boolean masks: ``Nx4`` float XYXY (empty masks give ``[0, 0, 0, 0]``)."""
    return batched_mask_to_box(masks.bool()).float()


def keep_in_frame(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``Nx4`` XYXY boxes clamped to a ``height x width`` frame, at least one pixel wide and high.

    ``x0`` is clamped to ``[0, width - 2]``, then ``x1`` to ``[x0 + 1, width - 1]`` (``y`` alike): a box the
    move collapsed or inverted keeps its left / top side and becomes one pixel wide / high; at the far border
    it steps back inside. Expects ``x0 <= x1`` where the order matters (sort swapped corners first).
    """
    x0 = boxes[:, 0].clamp(0, width - 2)
    y0 = boxes[:, 1].clamp(0, height - 2)
    x1 = torch.maximum(boxes[:, 2].clamp(max=width - 1), x0 + 1)
    y1 = torch.maximum(boxes[:, 3].clamp(max=height - 1), y0 + 1)
    return torch.stack([x0, y0, x1, y1], dim=1)


def grow_boxes(boxes: torch.Tensor, amounts: torch.Tensor) -> torch.Tensor:
    """Move every side of ``Nx4`` XYXY boxes outward by ``amounts`` (``Nx4`` pixels, >= 0; broadcastable), not
    clamped: ``x0 - a0, y0 - a1, x1 + a2, y1 + a3``."""
    return boxes + amounts * torch.tensor([-1.0, -1.0, 1.0, 1.0], device=boxes.device)


def jitter_boxes_sam(
    boxes: torch.Tensor,
    generator: torch.Generator,
    image_size: int,
    std_fraction: float = 0.1,
    max_shift: float | None = None,
) -> torch.Tensor:
    """SAM's box noise: each coordinate moves by N(0, std_fraction x box side), capped at ``max_shift``.

    SAM trains with std 10% of the side, capped at 20 px in its 1024 frame; ``max_shift`` defaults to that
    cap scaled to ``image_size``. Results are clamped to the image and kept non-degenerate
    (:func:`keep_in_frame`).

    Args:
        boxes: ``Nx4`` float XYXY in pixels of an ``image_size`` frame.
        generator: the only randomness.
    Returns:
        ``Nx4`` float XYXY.
    """
    if max_shift is None:
        max_shift = 20.0 * image_size / 1024.0
    w = (boxes[:, 2] - boxes[:, 0]).clamp(min=1.0)
    h = (boxes[:, 3] - boxes[:, 1]).clamp(min=1.0)
    side = torch.stack([w, h, w, h], dim=1)
    noise = torch.randn(boxes.shape, generator=generator, device=boxes.device) * std_fraction * side
    return keep_in_frame(boxes + noise.clamp(-max_shift, max_shift), image_size, image_size)


def jitter_boxes_uniform(
    boxes: torch.Tensor, max_px: float, generator: torch.Generator, image_size: int
) -> torch.Tensor:
    """Move each coordinate of ``Nx4`` XYXY boxes by U(-max_px, max_px); swapped corners are sorted, then the
    box is clamped and kept non-degenerate (:func:`keep_in_frame`).

    The evaluation jitter levels (0, 5, 10, 20 px) use this: a bounded, size-independent error, like a
    hurried annotator; :func:`jitter_boxes_sam` is the size-relative training noise.
    """
    if max_px <= 0:
        return boxes
    noise = (torch.rand(boxes.shape, generator=generator) * 2 - 1) * max_px
    moved = boxes + noise
    low, high = torch.minimum(moved[:, :2], moved[:, 2:]), torch.maximum(moved[:, :2], moved[:, 2:])
    return keep_in_frame(torch.cat([low, high], dim=1), image_size, image_size)


def masks_from_boxes(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Fill ``Nx4`` XYXY boxes (inclusive last pixel) into ``NxHxW`` boolean masks: the box-fill baseline."""
    ys = torch.arange(height, device=boxes.device).view(1, height, 1)
    xs = torch.arange(width, device=boxes.device).view(1, 1, width)
    b = boxes.round().long().view(-1, 4, 1, 1)
    return (xs >= b[:, 0]) & (xs <= b[:, 2]) & (ys >= b[:, 1]) & (ys <= b[:, 3])
