"""The PHPG objective: parallel heuristic prompt generation with simulated users, corrected where the model errs.

For one training slice with N regions (every object, capped at ``max_prompts_per_slice`` as in multi-prompt
fine-tuning; ``prompting=single``: one region):

1. **First round.** Each region draws its own first behaviour from ``first`` (a
   :class:`~samadapt.prompts.behaviour_mixture.BehaviourMixture`: tight / loose / shifted / partial / noisy /
   neighbour boxes, centre / random / boundary / several / negative-neighbour clicks); all N regions are
   decoded **in one pass** on the slice's one embedding
   (:meth:`~samadapt.models.decoder.SamDecoder.all_outputs`).
2. **Correction rounds** (``correction_rounds``, SAM's recipe: 8) and **mask-only rounds**
   (``mask_only_rounds``, SAM: 2; one placed at random among the corrections, the rest at the end, as
   :func:`~samadapt.models.prompting_rounds.round_schedule`): every round decodes all regions
   again on the same embedding with the previous low-res logits as mask prompt; a correction round first adds
   one click per region, each region drawing its own correction behaviour from ``correction`` (RITM's
   largest-error interior or SAM's random error pixel, both labelled from the truth).
3. **Error guidance** (``error_head`` given): after each decoder pass the
   :class:`~samadapt.models.error_head.ErrorHead` predicts where the masks are wrong and is trained against
   the true error (BCE, weight ``error_weight``). For a fraction ``guidance_mix`` of the correction clicks
   (drawn per region and round) the click is placed in the *predicted* error (thresholded at 0.5) instead of
   the true one, labelled from the truth at that pixel: training then sees the clicks a user gives when
   following the model's own refinement suggestions, which is how the head is used at inference.

**Loss per region**: the mean over rounds of multi-prompt training's per-prompt loss (Dice + BCE, or focal
with ``loss=dice+focal``, at ``loss_size`` px: None is the model-input frame), plus
``error_weight`` x the error head's BCE (mean over rounds). Where a region's prompt is a single click (SAM's
ambiguous case), the first round takes the minimum loss over SAM's three multimask outputs and continues
from the one of highest predicted IoU; every other round and prompt uses the single-mask output.
:meth:`PHPGObjective.slice_losses` returns these per-region losses like
:meth:`~samadapt.training.multi_prompt.MultiPromptObjective.slice_losses`, so CBDP (``pruning=class``)
scores PHPG's regions unchanged (a region's score then includes what it still teaches the error head).

**Cost.** A step decodes ``1 + correction_rounds + mask_only_rounds`` passes per slice, where multi-prompt
training decodes one: its time is about that many multi-prompt steps, plus the error head and the simulated
users. The default of ``samadapt train`` is 2 corrections + 1 mask-only round (4 passes) to stay affordable on
a CPU; SAM's and the issue's 8 + 2 are ``--set phpg_correction_rounds=8 --set phpg_mask_only_rounds=2``.
``regions_per_pass`` (0: all) splits the regions into several passes: the "one region per pass" baseline of
``benchmarks/bench_phpg.py``.

**Memory.** The loss spans every round, so autograd keeps every pass's activations until the backward pass:
``passes x regions`` times what one multi-prompt prompt keeps (about 115 MB per region and pass for a 64x64
embedding: LiteMedSAM, SAM; about 5 MB for ``tiny``). ``recompute_passes`` (``phpg_recompute_passes``) keeps
only each pass's inputs and outputs and recomputes its activations in the backward pass (activation
checkpointing of the decoder pass and of the error head): the same gradients for one more forward per pass.
The previous round's logits enter the next round detached (SAM), so no graph spans two rounds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from segment_anything.modeling import Sam
from torch.utils.checkpoint import checkpoint

from samadapt.models.error_head import ErrorHead, error_head_loss, true_error
from samadapt.models.prompting_rounds import PromptRound, decode_all_outputs, prompting_rounds, round_schedule
from samadapt.prompts.behaviour_mixture import (
    CORRECTION_BEHAVIOURS,
    FIRST_BEHAVIOURS,
    BehaviourMixture,
    check_weights,
    correction_mixture,
    first_mixture,
)
from samadapt.settings import check_flags, check_integers, check_numbers, setting_error
from samadapt.training.losses import mask_iou
from samadapt.training.multi_prompt import RegionLosses
from samadapt.training.slice_data import SliceSample

GUIDE_THRESHOLD = 0.5


@dataclass(frozen=True)
class PHPGSettings:
    """The ``phpg`` settings group of ``samadapt train`` (``--set objective=phpg --set phpg.correction_rounds=8``).

    - ``correction_rounds`` (SAM's recipe: 8; 2 keeps CPU runs affordable) and ``mask_only_rounds`` (SAM: 2).
    - ``first_weights`` / ``correction_weights``: behaviour name -> weight of the simulated users' first
      prompts and correction clicks (None: every behaviour 1; names left out: 0).
    - ``error_head``: train an error-prediction head (``error_weight`` x BCE) that places a fraction
      ``guidance_mix`` of the correction clicks. Off by default: it made a step 1.22x slower and showed no
      gain in the project's ablation (docs/phpg.md), and no inference surface loads it yet.
    - ``recompute_passes``: recompute each round's activations in the backward pass instead of keeping them
      (the same gradients; the memory of one round instead of all, one more decoder forward per round).
    """

    correction_rounds: int = 2
    mask_only_rounds: int = 1
    first_weights: dict[str, float] | None = None
    correction_weights: dict[str, float] | None = None
    error_head: bool = False
    guidance_mix: float = 0.5
    error_weight: float = 1.0
    recompute_passes: bool = False

    def __post_init__(self) -> None:
        bad = setting_error("phpg")
        check_integers(self, ("correction_rounds", "mask_only_rounds"), 0, bad)
        check_flags(self, ("error_head", "recompute_passes"), bad)
        check_numbers(self, ("error_weight",), bad)
        check_numbers(self, ("guidance_mix",), bad, fraction=True)
        for key, known in (("first_weights", FIRST_BEHAVIOURS), ("correction_weights", CORRECTION_BEHAVIOURS)):
            value = getattr(self, key)
            if value is not None:
                try:
                    object.__setattr__(self, key, check_weights(value, known, key))
                except ValueError as err:
                    raise bad(str(err)) from None


@dataclass(frozen=True)
class PHPGObjective(RegionLosses):
    """The objective: :class:`PHPGSettings` plus the mask-loss settings shared with multi-prompt training, with
    the behaviour mixtures and the error head built (:func:`phpg_objective_from_config`); the object choice,
    mask loss and reduction are multi-prompt training's (:class:`~samadapt.training.multi_prompt.RegionLosses`)."""

    first: BehaviourMixture = field(default_factory=first_mixture)
    correction: BehaviourMixture = field(default_factory=correction_mixture)
    correction_rounds: int = 2
    mask_only_rounds: int = 1
    error_head: ErrorHead | None = None
    guidance_mix: float = 0.5
    error_weight: float = 1.0
    regions_per_pass: int = 0
    recompute_passes: bool = False

    def _mask_loss(self, low_res: torch.Tensor, iou_pred: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """``NxK`` losses of low-res ``NxKx4gx4g`` logits and ``NxK`` IoU predictions against ``NxSxS`` masks:
        multi-prompt training's per-prompt loss (at ``loss_size``) for each of the K outputs."""
        n, k = iou_pred.shape
        logits, targets = self.loss_frame(low_res.reshape(n * k, *low_res.shape[2:]),
                                          masks.repeat_interleave(k, dim=0), masks.shape[-1])
        return self.per_prompt_loss(logits, iou_pred.reshape(n * k, 1).float(), targets).reshape(n, k)

    def _round_loss(self, low_res: torch.Tensor, iou_pred: torch.Tensor, masks: torch.Tensor,
                    ambiguous: torch.Tensor) -> torch.Tensor:
        """``N`` losses of one round from the decoder's four outputs ``Nx4x4gx4g`` / ``Nx4``: the single-mask
        output where the prompt is well specified, the minimum over SAM's three ambiguity outputs where it is
        ambiguous (``N`` bool). Only the outputs a region uses are scored."""
        if not bool(ambiguous.any()):
            return self._mask_loss(low_res[:, :1], iou_pred[:, :1], masks)[:, 0]
        if bool(ambiguous.all()):
            return self._mask_loss(low_res[:, 1:], iou_pred[:, 1:], masks).min(dim=1).values
        single, multi = (~ambiguous).nonzero()[:, 0], ambiguous.nonzero()[:, 0]
        losses = torch.cat([
            self._mask_loss(low_res[single, :1], iou_pred[single, :1], masks[single])[:, 0],
            self._mask_loss(low_res[multi, 1:], iou_pred[multi, 1:], masks[multi]).min(dim=1).values,
        ])
        return losses[torch.cat([single, multi]).argsort()]

    def _recomputed(self, function, *args, **kwargs):
        """``function(*args, **kwargs)``; with ``recompute_passes`` its activations are not kept for the
        backward pass but recomputed there (activation checkpointing): the same gradients for one more forward,
        and a step keeps about one pass's activations instead of every round's."""
        if self.recompute_passes and torch.is_grad_enabled():
            return checkpoint(function, *args, use_reentrant=False, **kwargs)
        return function(*args, **kwargs)

    def _rounds(self, sam: Sam, embedding: torch.Tensor, masks: torch.Tensor, slice_masks: torch.Tensor,
                generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        """Per-region losses ``N`` of the whole interactive sequence for regions ``masks`` (``NxSxS``)."""
        t0 = time.perf_counter()
        prompts, _ = self.first.first_prompts(masks, generator, slice_masks)
        kinds = round_schedule(self.correction_rounds, self.mask_only_rounds, generator)
        sequence = _Sequence(self, embedding, masks, generator, prompt_s=time.perf_counter() - t0)
        prompting_rounds(sam, embedding, prompts, kinds, sequence.clicks, on_round=sequence.score,
                         decode_pass=lambda *args: self._recomputed(decode_all_outputs, *args))
        return sequence.losses()

    def slice_losses(
        self, sam: Sam, sample: SliceSample, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """Per-region losses ``P`` of one slice, the indices of the prompted objects ``P``, and statistics:
        ``prompts`` (regions), ``train_iou`` (mean IoU after the first round, comparable to multi-prompt
        fine-tuning's), ``iou_last`` (after the last round), ``error_bce`` (error head), ``rounds``,
        ``prompt_s`` (seconds spent simulating users and choosing objects)."""
        t0 = time.perf_counter()
        device = next(sam.mask_decoder.parameters()).device
        chosen = self.choose_objects(sample.masks.shape[0], generator)
        embedding = sample.embedding.to(device)
        slice_masks = sample.masks
        step = self.regions_per_pass or len(chosen)
        prompt_s = time.perf_counter() - t0
        losses, parts = [], []
        for start in range(0, len(chosen), step):
            rows = chosen[start : start + step]
            part_losses, part_stats = self._rounds(sam, embedding, sample.masks[rows], slice_masks, generator)
            losses.append(part_losses)
            parts.append((len(rows), part_stats))
        total = sum(n for n, _ in parts)

        def mean(key: str) -> float:
            return sum(n * s[key] for n, s in parts) / total

        stats = {"prompts": float(total), "train_iou": mean("iou_first"), "iou_last": mean("iou_last"),
                 "rounds": float(1 + self.correction_rounds + self.mask_only_rounds),
                 "prompt_s": prompt_s + sum(s["prompt_s"] for _, s in parts)}
        if self.error_head is not None:
            stats["error_bce"] = mean("error_bce")
        return torch.cat(losses), chosen, stats


class _Sequence:
    """One interactive sequence of :meth:`PHPGObjective._rounds`: scores each round (``score``, the
    ``on_round`` of :func:`~samadapt.models.prompting_rounds.prompting_rounds`) and draws its correction
    clicks (``clicks``, the strategy), guided by the error head's prediction of the round before."""

    def __init__(self, objective: PHPGObjective, embedding: torch.Tensor, masks: torch.Tensor,
                 generator: torch.Generator, prompt_s: float) -> None:
        self.objective, self.embedding, self.masks, self.generator = objective, embedding, masks, generator
        self.truth = masks.to(embedding.device)
        self.prompt_s = prompt_s
        self.seg_losses: list[torch.Tensor] = []
        self.head_losses: list[torch.Tensor] = []
        self.ious: list[float] = []  # the first round's and the last round's (one entry when they are the same)
        self.image = None  # the error head's response to the embedding: the same in every round, computed once
        self.error_logits: torch.Tensor | None = None

    def score(self, round_: PromptRound) -> None:
        """The round's per-region loss, its IoU (first and last round only: the statistics read no other) and,
        with an error head, the head's prediction and loss."""
        objective = self.objective
        self.seg_losses.append(objective._round_loss(round_.low_res, round_.iou_pred, self.truth, round_.ambiguous))
        if round_.index == 0 or round_.last:
            self.ious.append(float(mask_iou(round_.logits, self.truth).mean()))
        self.error_logits = None
        if objective.error_head is not None:
            if self.image is None:
                self.image = objective.error_head.image_features(self.embedding, round_.chosen.shape[-1])
            self.error_logits = objective._recomputed(
                objective.error_head, round_.chosen, round_.chosen_iou, self.embedding, round_.image_size,
                image=self.image, upscaled_logits=round_.logits)
            self.head_losses.append(error_head_loss(self.error_logits, true_error(round_.logits, self.truth)))

    def clicks(self, round_: PromptRound) -> tuple[torch.Tensor, torch.Tensor]:
        """One correction click per region, each by its own drawn behaviour; a share ``guidance_mix`` placed in
        the error the head predicted."""
        t0 = time.perf_counter()
        objective = self.objective
        # drawn with or without a head, so that runs with and without guidance share their prompt draws
        use_guide = torch.rand(len(round_.prompts), generator=self.generator) < objective.guidance_mix
        guide = None
        if self.error_logits is not None and objective.guidance_mix > 0:
            guide = (self.error_logits.detach().sigmoid() > GUIDE_THRESHOLD).cpu()
        points, labels, _ = objective.correction.corrections((round_.logits > 0).cpu(), self.masks, self.generator,
                                                             guide, use_guide)
        self.prompt_s += time.perf_counter() - t0
        return points, labels

    def losses(self) -> tuple[torch.Tensor, dict[str, float]]:
        """Per-region losses ``N`` (mean over rounds, plus the weighted error-head loss) and statistics."""
        losses = torch.stack(self.seg_losses).mean(dim=0)
        stats = {"iou_first": self.ious[0], "iou_last": self.ious[-1], "prompt_s": self.prompt_s}
        if self.head_losses:
            head = torch.stack(self.head_losses).mean(dim=0)
            losses = losses + self.objective.error_weight * head
            stats["error_bce"] = float(head.detach().mean())
        return losses, stats


def phpg_objective_from_config(config, embed_dim: int) -> PHPGObjective:
    """The PHPG objective a ``FinetuneConfig`` describes (its ``phpg`` group, :class:`PHPGSettings`, and the
    mask-loss settings it shares with multi-prompt training); its error head (if on) is initialised from
    ``config.engine.seed`` for embeddings of ``embed_dim`` channels (``spec.prompt_embed_dim``)."""
    phpg: PHPGSettings = config.phpg
    head = None
    if phpg.error_head:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.engine.seed)
            head = ErrorHead(embed_dim)
    return PHPGObjective(
        prompting=config.prompting, max_prompts_per_slice=config.max_prompts_per_slice,
        first=first_mixture(phpg.first_weights), correction=correction_mixture(phpg.correction_weights),
        correction_rounds=phpg.correction_rounds, mask_only_rounds=phpg.mask_only_rounds, loss=config.loss,
        iou_weight=config.iou_weight, prompt_reduction=config.prompt_reduction, loss_size=config.loss_size,
        error_head=head, guidance_mix=phpg.guidance_mix, error_weight=phpg.error_weight,
        recompute_passes=phpg.recompute_passes)
