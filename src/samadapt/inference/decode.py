"""Decode many prompts on one image embedding with SAM's prompt encoder and mask decoder.

Embeddings come from the image encoder (or the embedding cache); prompts are in model-input pixels
(the ``S x S`` frame, ``S = spec.image_size``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam


def decode(
    sam: Sam,
    embedding: torch.Tensor,
    points: tuple[torch.Tensor, torch.Tensor] | None = None,
    boxes: torch.Tensor | None = None,
    mask_logits: torch.Tensor | None = None,
    multimask: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass of SAM's prompt encoder and mask decoder for N prompts on one image embedding.

    Args:
        embedding: ``1xCxgxg`` image embedding.
        points: (``NxPx2`` XY in model-input pixels, ``NxP`` labels: 1 positive, 0 negative, -1 pad) or None.
        boxes: ``Nx4`` XYXY in model-input pixels, or None.
        mask_logits: ``Nx1x4gx4g`` previous low-res logits, or None.
        multimask: return SAM's three ambiguity outputs instead of the single one.
    Returns:
        low-res logits ``NxKx4gx4g`` and IoU predictions ``NxK`` (K = 3 or 1).
    """
    sparse, dense = sam.prompt_encoder(points=points, boxes=boxes, masks=mask_logits)
    return sam.mask_decoder(
        image_embeddings=embedding,
        image_pe=sam.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
    )


def upscale_logits(low_res: torch.Tensor, image_size: int) -> torch.Tensor:
    """Low-res logits ``...x4gx4g`` -> model-input logits ``...xSxS`` (bilinear, as ``Sam.postprocess_masks``)."""
    shape = low_res.shape
    flat = low_res.reshape(-1, 1, shape[-2], shape[-1])
    up = F.interpolate(flat, (image_size, image_size), mode="bilinear", align_corners=False)
    return up.reshape(*shape[:-2], image_size, image_size)
