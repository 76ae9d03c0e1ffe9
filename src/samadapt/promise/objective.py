"""ProMISe's training objective on one slice: the mask loss through SAM's frozen prompt encoder and decoder.

- **Automatic** (modes ``apm`` and ``apm+ips``): each adapter class present on the slice is prompted with
  its APM points (fixed labels) on the slice's one embedding, the mask tokens shifted by IPS when it
  trains; one decoder pass for all those classes. Loss per class mask: BCE + (1 - soft Dice) on the
  low-res logits against the area-downsampled class mask, averaged over the classes; plus
  ``presence_weight`` x the BCE of the presence logits over *all* adapter classes (present -> 1).
- **Prompted** (mode ``ips``): each object of the slice is prompted with ground-truth prompts
  (:func:`ground_truth_prompts`), the mask tokens shifted by IPS; the same mask loss, averaged over objects.

The mask is output 0 of the decoder run with ``multimask`` (ProMISe: multimask output, the first mask).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam

from samadapt.models.decoder import SamDecoder
from samadapt.promise.samples import PromiseSample, low_res_targets
from samadapt.prompts.boxes import boxes_from_masks
from samadapt.prompts.point_sets import sample_point_sets
from samadapt.training.losses import bce_loss, dice_loss, mask_iou


def mask_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``P`` losses: BCE + soft Dice loss of low-res logits ``PxLxL`` against soft targets ``PxLxL``."""
    return bce_loss(logits, targets) + dice_loss(logits, targets)


def ground_truth_prompts(
    masks: torch.Tensor, kind: str, n_positive: int, n_negative: int, generator: torch.Generator,
    valid_hw: tuple[int, int] | None = None, margin: float = 0.5,
) -> dict:
    """Prompts of ``NxSxS`` masks as keyword arguments of a decoder: ``kind`` ``points``
    (:func:`~samadapt.prompts.point_sets.sample_point_sets`) or ``box`` (tight boxes), model-input px."""
    if kind == "box":
        return {"boxes": boxes_from_masks(masks)}
    points, labels = sample_point_sets(masks, n_positive, n_negative, generator, valid_hw, margin)
    return {"points": (points, labels)}


def prompts_to(prompts: dict, device: torch.device | str) -> dict:
    """The prompts of :func:`ground_truth_prompts` on ``device``."""
    if "boxes" in prompts:
        return {"boxes": prompts["boxes"].to(device)}
    points, labels = prompts["points"]
    return {"points": (points.to(device), labels.to(device))}


@dataclass
class AdaptedSlice:
    """One training slice with the adapter's output for it: the sample of :meth:`PromiseObjective.slice_loss`.

    - ``sample``: the slice (embedding, masks).
    - ``shift``: ``1xTxC`` IPS shift of the mask tokens, or None (no IPS).
    - ``points`` ``KxNx2`` (model-input px) and ``labels`` ``KxN``: the APM points of every adapter class, or
      None (mode ``ips``: the objects are prompted with ground-truth prompts instead).
    - ``presence_logits``: ``K``, or None (no presence head).
    """

    sample: PromiseSample
    shift: torch.Tensor | None = None
    points: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    presence_logits: torch.Tensor | None = None


@dataclass(frozen=True)
class PromiseObjective:
    """Settings of the objective (:class:`~samadapt.config.PromiseConfig` documents each); an
    :class:`~samadapt.training.objective.Objective` of :class:`AdaptedSlice` samples."""

    presence_weight: float = 1.0
    ips_prompts: str = "mixed"
    num_positive: int = 8
    num_points: int = 16
    negative_margin: float = 0.5
    multimask: bool = True

    def _first_output(self, sam: Sam, shift: torch.Tensor | None, embedding: torch.Tensor,
                      **prompts) -> torch.Tensor:
        """``Nx4gx4g`` low-res logits of the decoder's first output (``multimask`` as set) for the prompts
        (``points=`` / ``boxes=`` of :class:`~samadapt.models.decoder.SamDecoder`) on ``embedding``."""
        low_res, _ = SamDecoder(sam, shift)(embedding, multimask=self.multimask, **prompts)
        return low_res[:, 0]

    def automatic_loss(
        self, sam: Sam, sample: PromiseSample, points: torch.Tensor, labels: torch.Tensor,
        presence_logits: torch.Tensor | None, shift: torch.Tensor | None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of one slice from its APM output.

        Args:
            points: ``KxNx2`` APM points of every adapter class (model-input px); labels ``KxN``.
            presence_logits: ``K`` or None.
            shift: ``1xTxC`` IPS shift or None.
        Returns:
            (scalar loss, statistics ``prompts``, ``mask_loss``, ``train_iou`` and, with presence logits,
            ``presence_loss`` and ``presence_acc``).
        """
        device = points.device
        present = sample.class_indices.to(device)
        low_res = self._first_output(sam, shift, sample.embedding.to(device), points=(points[present], labels[present]))
        targets = low_res_targets(sample.class_masks.to(device), low_res.shape[-1])
        loss = mask_loss(low_res.float(), targets).mean()
        stats = {"prompts": float(len(present)), "mask_loss": float(loss.detach()),
                 "train_iou": float(mask_iou(low_res.detach().float(), targets > 0.5).mean())}
        if presence_logits is not None:
            truth = sample.presence.to(device)
            presence_loss = F.binary_cross_entropy_with_logits(presence_logits.float(), truth)
            loss = loss + self.presence_weight * presence_loss
            stats["presence_loss"] = float(presence_loss.detach())
            stats["presence_acc"] = float(((presence_logits.detach() > 0).float() == truth).float().mean())
        return loss, stats

    def prompted_loss(
        self, sam: Sam, sample: PromiseSample, shift: torch.Tensor | None, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of one slice with ground-truth prompts per object (``ips_prompts``): scalar loss, statistics."""
        device = sample.embedding.device if shift is None else shift.device
        masks = sample.object_masks
        n = masks.shape[0]
        if self.ips_prompts == "mixed":
            use_box = torch.rand(n, generator=generator) < 0.5
        else:
            use_box = torch.full((n,), self.ips_prompts == "box")
        losses, ious = [], []
        embedding = sample.embedding.to(device)
        for kind, chosen in (("box", use_box), ("points", ~use_box)):
            if not chosen.any():
                continue
            prompts = ground_truth_prompts(masks[chosen], kind, self.num_positive,
                                           self.num_points - self.num_positive, generator, sample.valid_hw,
                                           self.negative_margin)
            low_res = self._first_output(sam, shift, embedding, **prompts_to(prompts, device))
            targets = low_res_targets(masks[chosen].to(device), low_res.shape[-1])
            losses.append(mask_loss(low_res.float(), targets))
            ious.append(mask_iou(low_res.detach().float(), targets > 0.5))
        loss = torch.cat(losses).mean()
        return loss, {"prompts": float(n), "mask_loss": float(loss.detach()),
                      "train_iou": float(torch.cat(ious).mean())}

    def slice_loss(
        self, sam: Sam, sample: AdaptedSlice, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The automatic loss where the adapter predicted APM points, else the prompted loss (ground-truth
        prompts, mode ``ips``): scalar loss and statistics."""
        if sample.points is not None:
            return self.automatic_loss(sam, sample.sample, sample.points, sample.labels, sample.presence_logits,
                                       sample.shift)
        return self.prompted_loss(sam, sample.sample, sample.shift, generator)
