"""Embed a mixed batch of region prompts (:class:`~samadapt.prompts.region_prompts.RegionPrompts`) for one
decoder pass (:meth:`samadapt.models.decoder.SamDecoder.all_outputs`), and SAM's choice among the outputs.

SAM's prompt encoder embeds clicks and boxes with its own ``_embed_points`` / ``_embed_boxes``; this module
only assembles their tokens per region so that regions with different prompts share one decoder call:

- every region's tokens are its clicks (padding clicks, label -1, become SAM's "not a point" token), then
  two box-corner tokens;
- a region without a box gets two "not a point" tokens in place of the corners, so all regions have the
  same number of tokens. Where no region has a box the corners are left out and SAM's own single padding
  token is added (exactly what ``PromptEncoder.forward`` does for clicks alone); where every region has one
  the tokens are exactly SAM's. Only mixed batches differ from SAM's own call, by one extra "not a point"
  token on the box-less regions: SAM itself pads batched clicks this way.
- the mask prompt (previous low-res logits, ``Nx1x4gx4g``) goes through SAM's mask embedding as usual.

The decoder's :meth:`predict_masks` returns all four mask tokens' outputs (``SamDecoder.all_outputs``);
:func:`pick_outputs` takes SAM's choice per region: output 0 for a well-specified prompt, the best predicted
IoU among outputs 1..3 for an ambiguous one (a single click), as ``multimask_output`` does at inference.
"""

from __future__ import annotations

import torch
from segment_anything.modeling import Sam

from samadapt.prompts.region_prompts import RegionPrompts


def encode_region_prompts(
    sam: Sam, prompts: RegionPrompts, mask_logits: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse ``NxTxC`` and dense ``Nx C x g x g`` (or ``1xCxgxg`` without mask prompts) prompt embeddings."""
    encoder = sam.prompt_encoder
    n = len(prompts)
    tokens = []
    any_box = bool(prompts.has_box.any())
    if prompts.points.shape[1] > 0:
        tokens.append(encoder._embed_points(prompts.points, prompts.labels, pad=not any_box))
    if any_box:
        corners = encoder._embed_boxes(prompts.boxes)
        not_a_point = encoder.not_a_point_embed.weight.expand_as(corners)
        tokens.append(torch.where(prompts.has_box[:, None, None], corners, not_a_point))
    sparse = torch.cat(tokens, dim=1) if tokens else torch.empty(n, 0, encoder.embed_dim, device=prompts.boxes.device)
    _, dense = encoder(points=None, boxes=None, masks=mask_logits)
    return sparse, dense


def pick_outputs(
    low_res: torch.Tensor, iou_pred: torch.Tensor, ambiguous: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SAM's output per region: (logits ``Nx4gx4g``, predicted IoU ``N``, output index ``N``).

    Output 0 where ``ambiguous`` (``N`` bool) is false; else the output of highest predicted IoU among 1..3.
    """
    best_multi = iou_pred[:, 1:].argmax(dim=1) + 1
    index = torch.where(ambiguous.to(iou_pred.device), best_multi, torch.zeros_like(best_multi))
    rows = torch.arange(low_res.shape[0], device=low_res.device)
    return low_res[rows, index], iou_pred[rows, index], index
