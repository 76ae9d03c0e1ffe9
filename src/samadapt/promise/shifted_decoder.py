"""SAM's frozen mask decoder with IPS's additive shift of its mask-token embeddings.

IPS (incremental pattern shifting) adds an image-conditioned ``T x C`` shift to the decoder's learned
mask tokens (``sam.mask_decoder.mask_tokens.weight``, ``T = num_mask_tokens`` = 4, ``C =
transformer_dim``) before they enter the two-way transformer. Nothing of SAM is copied or changed: the
decoder runs through :func:`torch.func.functional_call` with ``mask_tokens.weight`` replaced by ``W +
shift`` for that call only. SAM's own tensor stays as it is (and frozen); the gradient flows into the shift.

``segment_anything``'s decoder takes one image embedding per call (it repeats it over the prompts), so a
shift is one image's ``1xTxC`` too; batches of images are decoded image by image, as everywhere in samadapt.
"""

from __future__ import annotations

import torch
from segment_anything.modeling import Sam
from torch.func import functional_call

from samadapt.inference.decode import decode

MASK_TOKENS = "mask_tokens.weight"


def decode_with_shift(
    sam: Sam,
    embedding: torch.Tensor,
    shift: torch.Tensor | None,
    points: tuple[torch.Tensor, torch.Tensor] | None = None,
    boxes: torch.Tensor | None = None,
    mask_logits: torch.Tensor | None = None,
    multimask: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`samadapt.inference.decode.decode` with the mask tokens shifted by ``shift``.

    Args:
        embedding: ``1xCxgxg`` image embedding.
        shift: ``1xTxC`` (or ``TxC``) additive shift of the mask tokens, or None (plain SAM).
        points: (``NxPx2`` XY in model-input pixels, ``NxP`` labels: 1 positive, 0 negative, -1 pad) or None.
        boxes: ``Nx4`` XYXY in model-input pixels, or None.
        mask_logits: ``Nx1x4gx4g`` previous low-res logits, or None.
        multimask: SAM's three ambiguity outputs (mask tokens 1-3) instead of the single one (token 0).
    Returns:
        low-res logits ``NxKx4gx4g`` and IoU predictions ``NxK`` (K = 3 or 1).
    """
    if shift is None:
        return decode(sam, embedding, points, boxes, mask_logits, multimask)
    decoder = sam.mask_decoder
    tokens = decoder.mask_tokens.weight
    if shift.dim() == 3:
        if shift.shape[0] != 1:
            raise ValueError(f"one image per call: shift must be 1xTxC, got {tuple(shift.shape)}")
        shift = shift[0]
    if shift.shape != tokens.shape:
        raise ValueError(f"shift {tuple(shift.shape)} does not fit the mask tokens {tuple(tokens.shape)}")
    sparse, dense = sam.prompt_encoder(points=points, boxes=boxes, masks=mask_logits)
    kwargs = {"image_embeddings": embedding, "image_pe": sam.prompt_encoder.get_dense_pe(),
              "sparse_prompt_embeddings": sparse, "dense_prompt_embeddings": dense, "multimask_output": multimask}
    return functional_call(decoder, {MASK_TOKENS: tokens + shift.to(tokens.dtype)}, args=(), kwargs=kwargs)
