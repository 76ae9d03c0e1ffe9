"""Held-out evaluation of a promptable model on the synthetic shape corpus."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam

from samadapt.models.decoder import SamDecoder
from samadapt.models.preprocess import to_model_input
from samadapt.models.registry import ModelSpec
from samadapt.prompts.boxes import boxes_from_masks
from samadapt.prompts.points import sample_points_in_masks
from samadapt.training.losses import mask_iou


@torch.inference_mode()
def evaluate_on_shapes(
    sam: Sam, spec: ModelSpec, images: np.ndarray, instances: np.ndarray, seed: int = 0, batch_size: int = 8
) -> dict[str, float]:
    """Mean IoU over every object of held-out corpus images, for two prompts.

    ``box_iou``: the tight box of each object, single-mask output. ``point_iou``: one random positive
    click inside the object, multimask output, the mask of highest predicted IoU kept (SAM's inference
    rule). IoU at model-input resolution (masks thresholded at logit 0). Runs on the model's device; the
    clicks are drawn on the CPU, so the figures do not depend on the device's random stream.

    Args:
        images: ``NxSxSx3`` uint8; instances: ``NxSxS`` uint8 (0 background).
    """
    was_training = sam.training
    sam.eval()
    generator = torch.Generator().manual_seed(seed)
    device = next(sam.parameters()).device
    box_ious, point_ious = [], []
    for start in range(0, len(images), batch_size):
        x = to_model_input(images[start : start + batch_size], spec).to(device)
        embeddings = sam.image_encoder(x)
        for b in range(x.shape[0]):
            inst = torch.as_tensor(instances[start + b])
            ids = torch.unique(inst)
            ids = ids[ids > 0]
            if len(ids) == 0:
                continue
            cpu_masks = inst[None] == ids[:, None, None]
            masks = cpu_masks.to(device)
            emb = embeddings[b : b + 1]
            low, _ = SamDecoder(sam)(emb, None, boxes_from_masks(masks), None, multimask=False)
            up = F.interpolate(low, spec.image_size, mode="bilinear", align_corners=False)[:, 0]
            box_ious.append(mask_iou(up, masks).cpu())
            pts = sample_points_in_masks(cpu_masks, generator)[:, None].to(device)
            labels = torch.ones(pts.shape[:2], dtype=torch.long, device=device)
            low, iou_pred = SamDecoder(sam)(emb, (pts, labels), None, None, True)
            best = low[torch.arange(len(ids), device=device), iou_pred.argmax(1)][:, None]
            up = F.interpolate(best, spec.image_size, mode="bilinear", align_corners=False)[:, 0]
            point_ious.append(mask_iou(up, masks).cpu())
    sam.train(was_training)
    if not box_ious:
        return {"box_iou": float("nan"), "point_iou": float("nan"), "objects": 0}
    return {
        "box_iou": float(torch.cat(box_ious).mean()),
        "point_iou": float(torch.cat(point_ious).mean()),
        "objects": int(sum(len(t) for t in box_ious)),
    }
