"""Prompting rounds: N regions of one image decoded together, round after round, as a user refines them.

The one loop behind every interactive use of SAM's decoder here: SAM's pretraining recipe
(:mod:`samadapt.pretraining.interactive`), PHPG training (:mod:`samadapt.training.phpg`), the interactive
evaluation protocol (:mod:`samadapt.evaluation.interactive_protocol`), and, with no round after the first,
multi-prompt training (:mod:`samadapt.training.multi_prompt`).

1. **First round**: the regions' first prompts (:class:`~samadapt.prompts.region_prompts.RegionPrompts`, any
   mix of boxes and clicks) are decoded in one pass on the image's one embedding
   (:meth:`~samadapt.models.decoder.SamDecoder.all_outputs`).
2. **Later rounds**, one per entry of ``kinds``: ``"click"`` first asks the ``clicks`` strategy for one more
   click per region (it sees the previous round), ``"mask"`` adds nothing; both decode every region again
   with the previous round's chosen low-res logits as mask prompt (detached, as SAM feeds them back).
3. **Output choice** (``pick``, default :func:`~samadapt.models.region_decode.pick_outputs`, SAM's):
   in the first round a region whose prompt is a single click (SAM's ambiguous case) takes the best of the
   three multimask outputs by predicted IoU; every other region and round the single-mask output.

What differs between the callers is passed in: the first prompts, the round kinds
(:func:`round_schedule` for SAM's recipe), the simulated user (``clicks``), the output choice, and
``on_round``, called after every pass to score it (a training loss, an evaluation score); it may stop the
sequence early by returning True. Frames: prompts in model-input pixels (``S x S``, ``S`` the encoder's input
size); low-res logits ``4g x 4g`` for a ``g x g`` embedding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
from segment_anything.modeling import Sam

from samadapt.models.decoder import SamDecoder, upscale_logits
from samadapt.models.region_decode import pick_outputs
from samadapt.prompts.corrections import previous_logits_prompt
from samadapt.prompts.region_prompts import RegionPrompts

ROUND_KINDS = ("click", "mask")


def round_schedule(correction_rounds: int, mask_only_rounds: int, generator: torch.Generator) -> list[str]:
    """SAM's rounds after the first: ``correction_rounds`` ``"click"`` rounds and ``mask_only_rounds``
    ``"mask"`` rounds, one mask-only round placed at random among the corrections, the rest at the end."""
    rounds = ["click"] * correction_rounds
    if mask_only_rounds >= 1:
        at = int(torch.randint(0, len(rounds) + 1, (1,), generator=generator))
        rounds.insert(at, "mask")
        rounds += ["mask"] * (mask_only_rounds - 1)
    return rounds


@dataclass(frozen=True)
class PromptRound:
    """One decoder pass of :func:`prompting_rounds` for N regions.

    - ``index``: 0 for the first round; ``kind``: ``"first"``, ``"click"`` or ``"mask"``; ``last``: no round
      follows (the sequence ended or ``on_round`` stopped it is not known yet: ``last`` is by ``kinds``).
    - ``prompts``: the regions' prompts decoded in this round (clicks so far, boxes).
    - ``low_res`` ``Nx4x4gx4g`` and ``iou_pred`` ``Nx4``: all four decoder outputs (output 0 single-mask,
      1..3 SAM's ambiguity outputs), with their autograd graph when gradients are on.
    - ``ambiguous`` ``N`` bool: regions answered with the best of outputs 1..3 (first round, single click).
    - ``chosen`` ``Nx4gx4g`` and ``chosen_iou`` ``N``: the picked output of each region (with graph).
    - ``logits``: ``NxSxS`` float32, ``chosen`` detached and upscaled to the model-input frame (computed
      on first use).
    """

    index: int
    kind: str
    last: bool
    prompts: RegionPrompts
    low_res: torch.Tensor
    iou_pred: torch.Tensor
    ambiguous: torch.Tensor
    chosen: torch.Tensor
    chosen_iou: torch.Tensor
    image_size: int

    @cached_property
    def logits(self) -> torch.Tensor:
        return upscale_logits(self.chosen.detach().float(), self.image_size)


# the next click of each region, given the round before it: (points ``Nx2`` XY, labels ``N``)
ClickStrategy = Callable[[PromptRound], tuple[torch.Tensor, torch.Tensor]]
# the output of each region: (low_res ``Nx4x4gx4g``, iou_pred ``Nx4``, ambiguous ``N``) -> (logits ``Nx4gx4g``,
# predicted IoU ``N``, output index ``N``)
OutputPicker = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
DecodePass = Callable[[Sam, torch.Tensor, RegionPrompts, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor]]


def decode_all_outputs(sam: Sam, embedding: torch.Tensor, prompts: RegionPrompts,
                       mask_logits: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The default decoder pass: :meth:`SamDecoder.all_outputs <samadapt.models.decoder.SamDecoder.all_outputs>`
    of plain SAM (low-res logits ``Nx4x4gx4g``, IoU predictions ``Nx4``)."""
    return SamDecoder(sam).all_outputs(embedding, prompts, mask_logits)


def prompting_rounds(
    sam: Sam,
    embedding: torch.Tensor,
    prompts: RegionPrompts,
    kinds: Sequence[str] = (),
    clicks: ClickStrategy | None = None,
    *,
    pick: OutputPicker = pick_outputs,
    on_round: Callable[[PromptRound], bool | None] | None = None,
    decode_pass: DecodePass = decode_all_outputs,
) -> PromptRound:
    """Decode ``prompts`` on ``embedding``, then one more round per entry of ``kinds`` (module docstring).

    Args:
        embedding: ``1xCxgxg`` image embedding, on the decoder's device.
        prompts: the N regions' first prompts (any device; moved to the embedding's for each pass).
        kinds: ``"click"`` / ``"mask"`` per round after the first (empty: one pass, multi-prompt's case).
        clicks: the simulated user, called before each ``"click"`` round with the previous round; needed
            when ``kinds`` has a click round.
        pick: the output choice per region.
        on_round: called after every pass; returning True ends the sequence there.
        decode_pass: the decoder pass, ``decode_all_outputs``'s signature (e.g. wrapped in activation
            checkpointing).
    Returns:
        The last round decoded.
    """
    unknown = sorted(set(kinds) - set(ROUND_KINDS))
    if unknown:
        raise ValueError(f"round kinds {unknown}: use {' or '.join(ROUND_KINDS)}")
    if clicks is None and "click" in kinds:
        raise ValueError("click rounds need a clicks strategy (the simulated user)")
    device = embedding.device
    image_size = sam.image_encoder.img_size
    previous, current = None, None
    all_kinds = ["first", *kinds]
    for index, kind in enumerate(all_kinds):
        if kind == "click":
            points, labels = clicks(current)
            prompts = prompts.with_clicks(points, labels)
        low_res, iou_pred = decode_pass(sam, embedding, prompts.to(device), previous)
        ambiguous = prompts.ambiguous.to(device) if index == 0 else torch.zeros(len(prompts), dtype=torch.bool,
                                                                                device=device)
        chosen, chosen_iou, _ = pick(low_res, iou_pred, ambiguous)
        current = PromptRound(index, kind, index == len(all_kinds) - 1, prompts, low_res, iou_pred, ambiguous,
                              chosen, chosen_iou, image_size)
        if on_round is not None and on_round(current):
            break
        previous = previous_logits_prompt(chosen)
    return current
