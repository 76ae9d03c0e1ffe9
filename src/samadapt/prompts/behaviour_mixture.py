"""A population of simulated users: one behaviour drawn per region per round, with configurable weights.

:data:`FIRST_BEHAVIOURS` are the first prompts people give (the box and click behaviours of
:mod:`~samadapt.prompts.box_behaviours` and :mod:`~samadapt.prompts.click_behaviours`, with their default
parameters); :data:`CORRECTION_BEHAVIOURS` the correction clicks of :mod:`~samadapt.prompts.corrections`.
A :class:`BehaviourMixture` draws, independently for every region, one behaviour with probability
proportional to its weight (weight 0 switches a behaviour off), then runs each drawn behaviour once on all
the regions that drew it, so a round costs one call per behaviour, not per region.

Default weights: every first behaviour 1, so boxes (6 kinds) and clicks (5 kinds) come about 55 / 45, close
to SAM-Med2D's 50 / 50 box-or-points first round; corrections: the RITM user and SAM's random-error user 1 : 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from samadapt.prompts.box_behaviours import LooseBox, NeighbourBox, NoisyBox, PartialBox, ShiftedBox, TightBox
from samadapt.prompts.click_behaviours import (
    BoundaryClick,
    CentreClick,
    MultiClick,
    NegativeNeighbourClick,
    RandomClick,
)
from samadapt.prompts.corrections import LargestErrorClick, RandomErrorClick
from samadapt.prompts.region_prompts import RegionPrompts

FIRST_BEHAVIOURS: dict[str, object] = {b.name: b for b in (
    TightBox(), LooseBox(), ShiftedBox(), PartialBox(), NoisyBox(), NeighbourBox(),
    CentreClick(), RandomClick(), BoundaryClick(), MultiClick(), NegativeNeighbourClick(),
)}
CORRECTION_BEHAVIOURS: dict[str, object] = {b.name: b for b in (LargestErrorClick(), RandomErrorClick())}
DEFAULT_FIRST_WEIGHTS: dict[str, float] = {name: 1.0 for name in FIRST_BEHAVIOURS}
DEFAULT_CORRECTION_WEIGHTS: dict[str, float] = {name: 1.0 for name in CORRECTION_BEHAVIOURS}


def check_weights(weights: Mapping[str, float], known: Mapping[str, object], what: str) -> dict[str, float]:
    """``weights`` as a plain dict of floats; ``ValueError`` naming the known behaviours for unknown names,
    negative or non-numeric weights, or when all are zero."""
    if not isinstance(weights, Mapping):
        raise ValueError(f"{what}: give a mapping behaviour: weight, e.g. {{{next(iter(known))}: 1}}")
    unknown = sorted(set(weights) - set(known))
    if unknown:
        raise ValueError(f"{what}: unknown behaviour(s) {', '.join(map(str, unknown))}; known: {', '.join(known)}")
    plain = {}
    for name, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
            raise ValueError(f"{what}: weight of {name} is {weight!r}; use a number >= 0")
        plain[name] = float(weight)
    if not any(plain.values()):
        raise ValueError(f"{what}: every weight is 0; give at least one behaviour a positive weight")
    return plain


@dataclass(frozen=True)
class BehaviourMixture:
    """Draws one behaviour per region from ``weights`` (name -> weight) over ``behaviours`` (name -> behaviour).

    Names missing from ``weights`` have weight 0.
    """

    weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_FIRST_WEIGHTS))
    behaviours: Mapping[str, object] = field(default_factory=lambda: dict(FIRST_BEHAVIOURS))

    def __post_init__(self) -> None:
        object.__setattr__(self, "weights", check_weights(self.weights, self.behaviours, "behaviour weights"))

    @property
    def names(self) -> list[str]:
        """The behaviours that can be drawn (positive weight), in a fixed order."""
        return [name for name, weight in self.weights.items() if weight > 0]

    def draw(self, n: int, generator: torch.Generator) -> list[str]:
        """The behaviour of each of ``n`` regions."""
        names = self.names
        probabilities = torch.tensor([self.weights[name] for name in names])
        if n == 0:
            return []
        picks = torch.multinomial(probabilities, n, replacement=True, generator=generator)
        return [names[i] for i in picks.tolist()]

    def _groups(self, drawn: list[str]) -> list[tuple[str, torch.Tensor]]:
        return [(name, torch.tensor([i for i, d in enumerate(drawn) if d == name], dtype=torch.long))
                for name in self.names if name in drawn]

    def first_prompts(
        self, masks: torch.Tensor, generator: torch.Generator, slice_masks: torch.Tensor | None = None
    ) -> tuple[RegionPrompts, list[str]]:
        """First prompts of ``masks`` (``NxHxW`` bool), each region from its own drawn behaviour.

        ``slice_masks``: every object of the slice (``MxHxW``), for the behaviours that look at neighbours.
        Returns the prompts and the behaviour name of each region.
        """
        drawn = self.draw(masks.shape[0], generator)
        groups = self._groups(drawn)
        parts = [self.behaviours[name](masks[rows], generator, slice_masks) for name, rows in groups]
        return RegionPrompts.merge(parts, [rows for _, rows in groups], masks.shape[0]), drawn

    def corrections(
        self, prediction: torch.Tensor, target: torch.Tensor, generator: torch.Generator,
        guide: torch.Tensor | None = None, use_guide: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """One correction click per region, each by its own drawn behaviour: points ``Nx2``, labels ``N``,
        names. ``guide`` / ``use_guide`` as in :mod:`samadapt.prompts.corrections`."""
        n = target.shape[0]
        drawn = self.draw(n, generator)
        points, labels = torch.zeros(n, 2), torch.zeros(n, dtype=torch.long)
        for name, rows in self._groups(drawn):
            sub_guide = guide[rows] if guide is not None else None
            sub_use = use_guide[rows] if use_guide is not None else None
            p, lab = self.behaviours[name](prediction[rows], target[rows], generator, sub_guide, sub_use)
            points[rows], labels[rows] = p, lab
        return points, labels, drawn


def first_mixture(weights: Mapping[str, float] | None = None) -> BehaviourMixture:
    """The first-prompt mixture over :data:`FIRST_BEHAVIOURS` (default weights when None)."""
    return BehaviourMixture(dict(DEFAULT_FIRST_WEIGHTS if weights is None else weights), FIRST_BEHAVIOURS)


def correction_mixture(weights: Mapping[str, float] | None = None) -> BehaviourMixture:
    """The correction mixture over :data:`CORRECTION_BEHAVIOURS` (default weights when None)."""
    return BehaviourMixture(dict(DEFAULT_CORRECTION_WEIGHTS if weights is None else weights), CORRECTION_BEHAVIOURS)
