"""The PHPG objective: parallel heuristic prompt generation with simulated users, corrected where the model errs.

For one training slice with N regions (every object, capped at ``max_prompts_per_slice`` as in multi-prompt
fine-tuning; ``prompting=single``: one region):

1. **First round.** Each region draws its own first behaviour from ``first`` (a
   :class:`~samadapt.prompts.behaviour_mixture.BehaviourMixture`: tight / loose / shifted / partial / noisy /
   neighbour boxes, centre / random / boundary / several / negative-neighbour clicks); all N regions are
   decoded **in one pass** on the slice's one embedding
   (:func:`~samadapt.inference.region_decode.decode_regions`).
2. **Correction rounds** (``correction_rounds``, SAM's recipe: 8) and **mask-only rounds**
   (``mask_only_rounds``, SAM: 2; one placed at random among the corrections, the rest at the end, as
   :meth:`~samadapt.pretraining.interactive.InteractiveRecipe.schedule`): every round decodes all regions
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

from samadapt.inference.decode import upscale_logits
from samadapt.inference.region_decode import decode_regions, pick_outputs
from samadapt.models.error_head import ErrorHead, error_head_loss, true_error
from samadapt.pretraining.interactive import InteractiveRecipe
from samadapt.prompts.behaviour_mixture import (
    CORRECTION_BEHAVIOURS,
    FIRST_BEHAVIOURS,
    BehaviourMixture,
    check_weights,
    correction_mixture,
    first_mixture,
)
from samadapt.prompts.corrections import previous_logits_prompt
from samadapt.settings import check_flags, check_integers, check_numbers, setting_error
from samadapt.training.losses import mask_iou
from samadapt.training.multi_prompt import MultiPromptObjective
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
class PHPGObjective:
    """The objective: :class:`PHPGSettings` plus the mask-loss settings shared with multi-prompt training, with
    the behaviour mixtures and the error head built (:func:`phpg_objective_from_config`)."""

    prompting: str = "multi"
    max_prompts_per_slice: int = 32
    first: BehaviourMixture = field(default_factory=first_mixture)
    correction: BehaviourMixture = field(default_factory=correction_mixture)
    correction_rounds: int = 2
    mask_only_rounds: int = 1
    loss: str = "dice+bce"
    iou_weight: float = 1.0
    prompt_reduction: str = "mean"
    loss_size: int | None = None
    error_head: ErrorHead | None = None
    guidance_mix: float = 0.5
    error_weight: float = 1.0
    regions_per_pass: int = 0
    recompute_passes: bool = False

    @property
    def _multi_prompt(self) -> MultiPromptObjective:
        """Multi-prompt training's objective with this one's settings: its object choice and mask loss."""
        return MultiPromptObjective(self.prompting, self.max_prompts_per_slice, loss=self.loss,
                                    iou_weight=self.iou_weight, prompt_reduction=self.prompt_reduction,
                                    loss_size=self.loss_size)

    def choose_objects(self, n_objects: int, generator: torch.Generator) -> torch.Tensor:
        """The regions prompted this time (as multi-prompt fine-tuning chooses its objects)."""
        return self._multi_prompt.choose_objects(n_objects, generator)

    def _mask_loss(self, low_res: torch.Tensor, iou_pred: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """``NxK`` losses of low-res ``NxKx4gx4g`` logits and ``NxK`` IoU predictions against ``NxSxS`` masks:
        multi-prompt training's per-prompt loss (at ``loss_size``) for each of the K outputs."""
        n, k = iou_pred.shape
        multi = self._multi_prompt
        logits, targets = multi.loss_frame(low_res.reshape(n * k, *low_res.shape[2:]),
                                           masks.repeat_interleave(k, dim=0), masks.shape[-1])
        return multi.per_prompt_loss(logits, iou_pred.reshape(n * k, 1).float(), targets).reshape(n, k)

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
        device = embedding.device
        image_size = sam.image_encoder.img_size
        truth = masks.to(device)
        prompt_s = 0.0
        t0 = time.perf_counter()
        prompts, _ = self.first.first_prompts(masks, generator, slice_masks)
        kinds = ["first", *InteractiveRecipe(self.correction_rounds, self.mask_only_rounds).schedule(generator)]
        prompt_s += time.perf_counter() - t0
        previous = None
        image = None  # the error head's response to the embedding: the same in every round, computed once
        never = torch.zeros(len(prompts), dtype=torch.bool, device=device)
        seg_losses, head_losses, ious = [], [], []
        for r in range(len(kinds)):
            low_res, iou_pred = self._recomputed(decode_regions, sam, embedding, prompts.to(device), previous)
            ambiguous = prompts.ambiguous.to(device) if r == 0 else never
            seg_losses.append(self._round_loss(low_res, iou_pred, truth, ambiguous))
            chosen, chosen_iou, _ = pick_outputs(low_res, iou_pred, ambiguous)
            logits = upscale_logits(chosen.detach().float(), image_size)
            ious.append(float(mask_iou(logits, truth).mean()))
            error_logits = None
            if self.error_head is not None:
                if image is None:
                    image = self.error_head.image_features(embedding, chosen.shape[-1])
                error_logits = self._recomputed(self.error_head, chosen, chosen_iou, embedding, image_size,
                                                image=image, upscaled_logits=logits)
                head_losses.append(error_head_loss(error_logits, true_error(logits, truth)))
            if r == len(kinds) - 1:
                break
            previous = previous_logits_prompt(chosen)
            if kinds[r + 1] == "click":
                t0 = time.perf_counter()
                # drawn with or without a head, so that runs with and without guidance share their prompt draws
                use_guide = torch.rand(len(prompts), generator=generator) < self.guidance_mix
                guide = None
                if error_logits is not None and self.guidance_mix > 0:
                    guide = (error_logits.detach().sigmoid() > GUIDE_THRESHOLD).cpu()
                points, labels, _ = self.correction.corrections((logits > 0).cpu(), masks, generator, guide, use_guide)
                prompts = prompts.with_clicks(points, labels)
                prompt_s += time.perf_counter() - t0
        losses = torch.stack(seg_losses).mean(dim=0)
        stats = {"iou_first": ious[0], "iou_last": ious[-1], "prompt_s": prompt_s}
        if head_losses:
            head = torch.stack(head_losses).mean(dim=0)
            losses = losses + self.error_weight * head
            stats["error_bce"] = float(head.detach().mean())
        return losses, stats

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

    # the slice's loss from its per-region losses (mean or max), and the scalar form: as multi-prompt training
    reduce = MultiPromptObjective.reduce
    slice_loss = MultiPromptObjective.slice_loss


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
