"""SAM's promptable training recipe, simulated interactively on one image embedding per image.

Per image, every sampled object is prompted at once (a batch of prompts on one embedding), round after round
(:func:`~samadapt.models.prompting_rounds.prompting_rounds`):

1. a first prompt: a noisy box (SAM's noise: std 10% of the side, capped at 20 px of the 1024 frame) or one
   positive click inside the object, each with probability 1/2;
2. correction rounds: a click sampled uniformly from the error region of the previous mask (false
   negative -> positive, false positive -> negative) is added to the prompts, and the previous low-res
   logits are fed back as the mask prompt;
3. mask-only rounds: no new click, only the previous logits (SAM: one at a random position among the
   corrections, one at the end).

Every round is supervised: focal:dice = 20:1 on the upsampled masks (at ``loss_size``, against
area-downsampled targets: a 4x saving over SAM's full-resolution loss) plus MSE between the IoU head and
the actual IoU; where the decoder answers a single click with three masks (multimask output, the ambiguous
case), only the output of minimum loss is back-propagated and the next round continues from the output
with the highest predicted IoU, as SAM does at inference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam

from samadapt.models.prompting_rounds import PromptRound, prompting_rounds, round_schedule
from samadapt.prompts.boxes import boxes_from_masks, jitter_boxes_sam
from samadapt.prompts.corrections import RandomErrorClick
from samadapt.prompts.points import sample_points_in_masks
from samadapt.prompts.region_prompts import RegionPrompts
from samadapt.training.losses import dice_loss, focal_loss, iou_head_loss, mask_iou


@dataclass(frozen=True)
class InteractiveRecipe:
    """Knobs of the interactive simulation (SAM's defaults: 8 corrections, 2 mask-only rounds)."""

    correction_rounds: int = 8
    mask_only_rounds: int = 2
    point_first_probability: float = 0.5
    box_noise_std: float = 0.1
    focal_weight: float = 20.0
    # Focal-loss class weighting. SAM's paper does not state alpha; the common 0.25 (weighting foreground
    # pixels by 0.25) made from-scratch pretraining collapse to empty masks here (held-out box IoU 0.00
    # after 100 steps), so the default weighs both classes alike. gamma stays 2.
    focal_alpha: float = -1.0
    dice_weight: float = 1.0
    iou_weight: float = 1.0
    loss_size: int | None = 128  # side at which the mask loss is computed; None = model-input size

    def schedule(self, generator: torch.Generator) -> list[str]:
        """Round kinds after the first: ``"click"`` or ``"mask"``, one mask-only round placed at random."""
        return round_schedule(self.correction_rounds, self.mask_only_rounds, generator)


def interactive_loss(
    sam: Sam,
    embeddings: torch.Tensor,
    targets: list[torch.Tensor],
    recipe: InteractiveRecipe,
    generator: torch.Generator,
    backward: bool = False,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of SAM's interactive recipe over a batch of images.

    Args:
        embeddings: ``BxCxgxg`` image embeddings (with gradient, if the encoder trains).
        targets: B tensors ``M_bxSxS`` bool, the objects of each image in model-input pixels.
        generator: CPU generator driving every random choice (prompt type, noise, clicks, schedule).
        backward: back-propagate every round as soon as its loss is computed, then the summed gradient
            of the embeddings through the encoder once, and return the loss detached. The gradients are
            those of ``loss.backward()`` (rounds share only the embeddings and the weights: the previous
            logits are fed back detached and clicks carry no gradient), up to the order of float sums,
            but memory holds the graph of one decoder round instead of every round of every image (the
            full 11-round recipe on 10 images: about 2.8 of pretraining's 4.8 GB peak).
    Returns:
        scalar loss (mean over images, rounds and objects) and statistics: first-round IoU for box and
        point prompts, and last-round IoU.
    """
    losses, stats = [], {"iou_first_box": [], "iou_first_point": [], "iou_last": []}
    source = embeddings
    if backward:  # rounds back-propagate into this leaf; the encoder once, at the end
        embeddings = embeddings.detach().requires_grad_(source.requires_grad)
    n_images = sum(1 for masks in targets if masks.shape[0] > 0)
    for b, masks in enumerate(targets):
        if masks.shape[0] == 0:
            continue
        image_loss = _image_loss(sam, embeddings[b : b + 1], masks.to(embeddings.device), recipe, generator,
                                 n_images if backward else 0, stats)
        losses.append(image_loss)
    loss = torch.stack(losses).mean() if losses else embeddings.sum() * 0
    if backward:
        if source.requires_grad and embeddings.grad is not None:
            source.backward(embeddings.grad)
        loss = loss.detach()
    summary = {k: float(sum(v) / len(v)) for k, v in stats.items() if v}
    return loss, summary


def _image_loss(sam: Sam, embedding: torch.Tensor, masks: torch.Tensor, recipe: InteractiveRecipe,
                generator: torch.Generator, backward_images: int, stats: dict[str, list[float]]) -> torch.Tensor:
    """The recipe's loss (mean over rounds and objects) for the ``MxSxS`` objects of one image embedding
    ``1xCxgxg``; appends to ``stats``. ``backward_images`` > 0: back-propagate each round's share of the mean
    over that many images at once and return the loss detached."""
    image_size = sam.image_encoder.img_size
    loss_size = recipe.loss_size or image_size
    soft_targets = F.adaptive_avg_pool2d(masks[:, None].float(), loss_size)  # Mx1xLxL in [0, 1]
    use_point = bool(torch.rand((), generator=generator) < recipe.point_first_probability)
    if use_point:
        points = sample_points_in_masks(masks.cpu(), generator)[:, None, :]
        prompts = RegionPrompts.from_points(points, torch.ones(points.shape[:2], dtype=torch.long))
    else:
        prompts = RegionPrompts.from_boxes(
            jitter_boxes_sam(boxes_from_masks(masks).cpu(), generator, image_size, recipe.box_noise_std))
    kinds = recipe.schedule(generator)
    round_losses = []

    def score(round_: PromptRound) -> None:
        # every object of an image has the same kind of first prompt: all ambiguous (one click) or none (a box);
        # later rounds are never ambiguous (round_.ambiguous, without reading it back from the device)
        outputs = slice(1, 4) if use_point and round_.index == 0 else slice(0, 1)
        low_res, iou_pred = round_.low_res[:, outputs], round_.iou_pred[:, outputs]
        logits = F.interpolate(low_res, (loss_size, loss_size), mode="bilinear", align_corners=False)
        target = soft_targets.expand_as(logits)
        focal = focal_loss(logits, target, alpha=recipe.focal_alpha)
        per_mask = recipe.focal_weight * focal + recipe.dice_weight * dice_loss(logits, target)
        iou_term = iou_head_loss(iou_pred, logits, target > 0.5).mean(dim=1)
        round_loss = (per_mask.min(dim=1).values + recipe.iou_weight * iou_term).mean()
        if backward_images and round_loss.requires_grad:
            (round_loss / (backward_images * (1 + len(kinds)))).backward()  # its share of the mean
            round_loss = round_loss.detach()
        round_losses.append(round_loss)
        if round_.index == 0:
            stats["iou_first_point" if use_point else "iou_first_box"].append(
                mask_iou(round_.logits, masks).mean().item())
        if round_.last:
            stats["iou_last"].append(mask_iou(round_.logits, masks).mean().item())

    user = RandomErrorClick()  # SAM's: a uniformly random pixel of the error region
    prompting_rounds(sam, embedding, prompts, kinds, on_round=score,
                     clicks=lambda round_: user(round_.logits > 0, masks, generator))
    return torch.stack(round_losses).mean()
