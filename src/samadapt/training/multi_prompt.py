"""The multi-prompt objective: every object of a slice prompted at once with a box, one decoder pass.

For one slice with N objects (organs and lesions), the N perturbed ground-truth boxes go through SAM's
prompt encoder and mask decoder together on the slice's single image embedding (SAM's batched prompts),
giving one mask per box: the first round of :func:`~samadapt.models.prompting_rounds.prompting_rounds` with
no round after it (PHPG, :mod:`samadapt.training.phpg`, adds the correction rounds). The ``single`` baseline
draws one random object per slice instead. Loss per prompt: Dice + BCE (or Dice + focal) on the masks
upsampled to ``loss_size`` pixels (None: the model-input frame) against the ground truth area-downsampled to
that size (soft targets), plus MSE between the IoU head and the actual IoU; the prompts of a slice are reduced
by their mean or by their maximum (the paper's choice: back-propagate the worst-served object).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam

from samadapt.models.decoder import upscale_logits
from samadapt.models.prompting_rounds import prompting_rounds
from samadapt.prompts.box_noise import BoxNoise
from samadapt.prompts.boxes import boxes_from_masks
from samadapt.prompts.region_prompts import RegionPrompts
from samadapt.training.losses import bce_loss, dice_loss, focal_loss, iou_head_loss, mask_iou
from samadapt.training.slice_data import SliceSample


@dataclass(frozen=True)
class RegionLosses:
    """What the per-region objectives share (multi-prompt and :class:`~samadapt.training.phpg.PHPGObjective`):
    the settings below (``FinetuneConfig`` documents each), the choice of objects, the per-prompt mask loss and
    the slice's reduction. The frozen dataclasses that extend it add their settings and supply ``slice_losses``
    (construct them with keywords: the shared fields come first)."""

    prompting: str = "multi"
    max_prompts_per_slice: int = 32
    loss: str = "dice+bce"
    iou_weight: float = 1.0
    prompt_reduction: str = "mean"
    loss_size: int | None = None

    def choose_objects(self, n_objects: int, generator: torch.Generator) -> torch.Tensor:
        """Indices of the objects prompted this time: all (capped at a random subset), or one at random."""
        if self.prompting == "single":
            return torch.randint(0, n_objects, (1,), generator=generator)
        if n_objects <= self.max_prompts_per_slice:
            return torch.arange(n_objects)
        return torch.randperm(n_objects, generator=generator)[: self.max_prompts_per_slice].sort().values

    def per_prompt_loss(self, logits: torch.Tensor, iou_pred: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """``N`` losses from logits ``NxLxL``, IoU predictions ``Nx1`` and targets ``NxLxL`` (bool, or soft in
        [0, 1]; the IoU head is scored against the targets thresholded at 0.5)."""
        pixel = focal_loss(logits, masks) if self.loss == "dice+focal" else bce_loss(logits, masks)
        iou_term = iou_head_loss(iou_pred[:, 0], logits, masks >= 0.5)
        return dice_loss(logits, masks) + pixel + self.iou_weight * iou_term

    def loss_frame(
        self, low_res: torch.Tensor, masks: torch.Tensor, image_size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``NxLxL`` upsampled from low-res ``Nx4gx4g`` and targets ``NxLxL`` at ``L = loss_size``:
        the masks ``NxSxS`` themselves at the model-input size, else their area average (soft)."""
        size = min(self.loss_size or image_size, image_size)
        logits = upscale_logits(low_res, size).float()
        if size == image_size:
            return logits, masks
        return logits, F.adaptive_avg_pool2d(masks[:, None].float(), size)[:, 0]

    def reduce(self, losses: torch.Tensor) -> torch.Tensor:
        """The slice's loss from its per-prompt losses: their mean, or their maximum."""
        return losses.max() if self.prompt_reduction == "max" else losses.mean()

    def slice_loss(
        self, sam: Sam, sample: SliceSample, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss of one slice and the statistics of ``slice_losses``."""
        losses, _, stats = self.slice_losses(sam, sample, generator)
        return self.reduce(losses), stats


@dataclass(frozen=True)
class MultiPromptObjective(RegionLosses):
    """Settings of the objective (``FinetuneConfig`` documents each): :class:`RegionLosses`'s and the box noise."""

    noise: BoxNoise = BoxNoise()

    def slice_losses(
        self, sam: Sam, sample: SliceSample, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """Per-prompt losses ``P`` of one slice, the indices of the prompted objects ``P``, and statistics:
        ``prompts``, mean ``train_iou`` of the masks, ``prompt_s`` (seconds choosing objects and boxes)."""
        t0 = time.perf_counter()
        device = next(sam.mask_decoder.parameters()).device
        image_size = sam.image_encoder.img_size
        chosen = self.choose_objects(sample.masks.shape[0], generator)
        masks = sample.masks[chosen]
        boxes = self.noise(boxes_from_masks(masks), sample.is_lesion[chosen], generator, image_size)
        masks = masks.to(device)
        prompt_s = time.perf_counter() - t0
        first = prompting_rounds(sam, sample.embedding.to(device), RegionPrompts.from_boxes(boxes))  # no later round
        logits, targets = self.loss_frame(first.chosen, masks, image_size)
        losses = self.per_prompt_loss(logits, first.chosen_iou[:, None].float(), targets)
        iou = float(mask_iou(logits.detach(), targets >= 0.5).mean())
        return losses, chosen, {"prompts": float(len(chosen)), "train_iou": iou, "prompt_s": prompt_s}
