"""Box prompts from masks, and SAM-style box noise.

Boxes are ``Nx4`` float tensors, XYXY, in the pixel frame of the masks they come from (for samadapt's
prepared data: model-input pixels). ``x1``/``y1`` are the last foreground column/row (inclusive), as SAM's
``batched_mask_to_box``.
"""

from __future__ import annotations

import torch
from segment_anything.utils.amg import batched_mask_to_box


def boxes_from_masks(masks: torch.Tensor) -> torch.Tensor:
    """Tight boxes of ``NxHxW`` boolean masks: ``Nx4`` float XYXY (empty masks give ``[0, 0, 0, 0]``)."""
    return batched_mask_to_box(masks.bool()).float()


def jitter_boxes_sam(
    boxes: torch.Tensor,
    generator: torch.Generator,
    image_size: int,
    std_fraction: float = 0.1,
    max_shift: float | None = None,
) -> torch.Tensor:
    """SAM's box noise: each coordinate moves by N(0, std_fraction x box side), capped at ``max_shift``.

    SAM trains with std 10% of the side, capped at 20 px in its 1024 frame; ``max_shift`` defaults to that
    cap scaled to ``image_size``. Results are clamped to the image and kept non-degenerate.

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
    noisy = boxes + noise.clamp(-max_shift, max_shift)
    noisy = noisy.clamp(0, image_size - 1)
    x0 = torch.minimum(noisy[:, 0], noisy[:, 2] - 1).clamp(min=0)
    y0 = torch.minimum(noisy[:, 1], noisy[:, 3] - 1).clamp(min=0)
    return torch.stack([x0, y0, torch.maximum(noisy[:, 2], x0 + 1), torch.maximum(noisy[:, 3], y0 + 1)], dim=1)


def jitter_boxes_uniform(
    boxes: torch.Tensor, max_px: float, generator: torch.Generator, image_size: int
) -> torch.Tensor:
    """Move each coordinate of ``Nx4`` XYXY boxes by U(-max_px, max_px), clamped and kept non-degenerate.

    The evaluation jitter levels (0, 5, 10, 20 px) use this: a bounded, size-independent error, like a
    hurried annotator; :func:`jitter_boxes_sam` is the size-relative training noise.
    """
    if max_px <= 0:
        return boxes
    noise = (torch.rand(boxes.shape, generator=generator) * 2 - 1) * max_px
    moved = (boxes + noise).clamp(0, image_size - 1)
    x0, y0 = torch.minimum(moved[:, 0], moved[:, 2]), torch.minimum(moved[:, 1], moved[:, 3])
    x1, y1 = torch.maximum(moved[:, 0], moved[:, 2]), torch.maximum(moved[:, 1], moved[:, 3])
    # widen collapsed boxes by one pixel; on the far border step back inside instead of out of the image
    x1 = torch.maximum(x1, x0 + 1).clamp(max=image_size - 1)
    y1 = torch.maximum(y1, y0 + 1).clamp(max=image_size - 1)
    return torch.stack([torch.minimum(x0, x1 - 1), torch.minimum(y0, y1 - 1), x1, y1], dim=1)


def masks_from_boxes(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Fill ``Nx4`` XYXY boxes (inclusive last pixel) into ``NxHxW`` boolean masks: the box-fill baseline."""
    ys = torch.arange(height, device=boxes.device).view(1, height, 1)
    xs = torch.arange(width, device=boxes.device).view(1, 1, width)
    b = boxes.round().long().view(-1, 4, 1, 1)
    return (xs >= b[:, 0]) & (xs <= b[:, 2]) & (ys >= b[:, 1]) & (ys <= b[:, 3])
