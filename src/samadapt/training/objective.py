"""What a training objective is: the loss of one training slice through SAM's decoder, from settings alone.

An objective is a frozen dataclass of settings with :meth:`Objective.slice_loss`; the training driver owns
the model, the data and the optimiser. Three implement it:

- :class:`~samadapt.training.multi_prompt.MultiPromptObjective` (``samadapt train``): every object of a slice
  boxed at once, one decoder pass: the zero-round case of
  :func:`~samadapt.models.prompting_rounds.prompting_rounds`;
- :class:`~samadapt.training.phpg.PHPGObjective` (``samadapt train --set objective=phpg``): simulated users
  over correction rounds of the same loop;
- :class:`~samadapt.promise.objective.PromiseObjective` (``samadapt adapt``): its sample is the slice with the
  adapter's output for it (:class:`~samadapt.promise.objective.AdaptedSlice`).

The fine-tuning objectives are also :class:`RegionObjective`: one loss per prompted object, so that CBDP
(``pruning=class``) can score objects and the slice's loss is their reduction.
"""

from __future__ import annotations

from typing import Protocol, TypeVar, runtime_checkable

import torch
from segment_anything.modeling import Sam

from samadapt.training.slice_data import SliceSample

SampleT = TypeVar("SampleT", contravariant=True)


@runtime_checkable
class Objective(Protocol[SampleT]):
    """The loss of one training slice (see the module docstring)."""

    def slice_loss(
        self, sam: Sam, sample: SampleT, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss of ``sample`` (with its autograd graph) and statistics (``prompts``: prompts decoded,
        ``train_iou``: their mean IoU, ...); ``generator`` is the only randomness (prompts, noise, users)."""
        ...


@runtime_checkable
class RegionObjective(Objective[SliceSample], Protocol):
    """An objective whose slice loss reduces one loss per prompted object."""

    def slice_losses(
        self, sam: Sam, sample: SliceSample, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """Per-object losses ``P``, the indices ``P`` of the objects prompted (into ``sample.masks``), statistics."""
        ...

    def reduce(self, losses: torch.Tensor) -> torch.Tensor:
        """The slice's scalar loss from its per-object losses ``P``."""
        ...
