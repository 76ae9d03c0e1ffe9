"""Class-balanced dynamic data pruning (CBDP) and its baselines, as an epoch planner for the engine.

**Unit.** Multi-prompt training decodes every object of a slice in one pass, so a *slice* is what a step
spends time on, and the unit pruned is the training slice. Its score comes from its objects: each object
keeps its latest loss (the loss of the last time it was prompted); a class's mean is taken over its
objects.

**Policies** (``policy``), applied at the start of every epoch:

- ``none``: every slice, every epoch.
- ``class`` (CBDP): a slice is *well learned* when the mean, over its objects, of (object loss / mean loss
  of the object's class) is below 1: its objects are easier than is usual *for their classes*, so each
  organ is judged against itself, not against the easiest organ. A fraction ``ratio`` of the well-learned
  slices, drawn at random, sits the epoch out; the kept well-learned ones get their loss scaled by
  ``1 / (1 - ratio)`` so the expected gradient is unchanged (InfoBatch). Class balance: no class loses more
  than ``1 - min_class_share`` of its slices in an epoch (pruned slices holding a class over its quota are
  restored), and slices holding a *rare* class (present in fewer than ``rare_class_share`` of the
  training slices: lesions, small organs) or a class of ``protected_classes`` are never pruned.
- ``global`` (InfoBatch): the same with one threshold, the mean raw loss over all slices, no class balance.
- ``random``: as many slices as ``class`` prunes (after its class balance), drawn uniformly, no rescaling
  and no protection: the same iteration count as CBDP.

Slices never scored yet are always kept (the first epoch is complete). The last ``anneal_fraction`` of the
epochs (at least one) are complete again, so training ends on all the data. With ``ratio`` 0.5, ``anneal_fraction``
0.125 and half the slices well learned, a run costs 0.875 x (1 - 0.5 x 0.5) + 0.125 = 78% of the full
iterations; the share of well-learned slices decides the real figure, which the planner reports.

**Resume.** The planner's state (scores, the current epoch's plan and where it started) is checkpointed by
the engine; plans are drawn from ``numpy.random.default_rng([seed, epoch])`` and the scores, so a resumed
run plans its later epochs identically.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from samadapt.settings import check_choices, check_numbers, names_list, setting_error
from samadapt.training.slice_data import TrainingSlice

PRUNING_POLICIES = ("none", "class", "global", "random")


@dataclass(frozen=True)
class PruningSettings:
    """The ``pruning`` settings group of ``samadapt train`` (``--set pruning.policy=class``); see the module
    docstring. With a policy other than ``none``, ``engine.steps`` sets the run's length in full-data epochs
    (``steps x batch_size x grad_accum / training slices``) and the run ends when those epochs are done, in
    fewer steps."""

    policy: str = "none"
    ratio: float = 0.5
    anneal_fraction: float = 0.125
    min_class_share: float = 0.5
    protected_classes: tuple[str, ...] = ()
    rare_class_share: float = 0.1

    def __post_init__(self) -> None:
        bad = setting_error("pruning")
        check_choices(self, {"policy": PRUNING_POLICIES}, bad)
        check_numbers(self, ("ratio", "anneal_fraction", "min_class_share", "rare_class_share"), bad, fraction=True)
        protected = names_list(self.protected_classes)
        if protected is None:
            protected = ()
        if not isinstance(protected, (list, tuple)) or not all(isinstance(c, str) for c in protected):
            raise bad(f"protected_classes={self.protected_classes!r}: give a list of class names, e.g. [lesion]")
        object.__setattr__(self, "protected_classes", tuple(protected))


@dataclass
class EpochPlan:
    """The slices an epoch visits, in order, with their loss weights, and per-class keep counts."""

    epoch: int
    order: np.ndarray  # slice indices
    weights: np.ndarray  # loss weight per entry of ``order``
    kept_per_class: dict[str, int]
    total_per_class: dict[str, int]


class EpochPlanner:
    """Plans epochs of training slices (pruned per :class:`PruningSettings`) and maps steps onto them.

    Steps: an epoch of ``L`` slices takes ``ceil(L / slices_per_step)`` steps; the last step of an epoch may
    hold fewer slices. The run lasts ``epochs`` epochs (the last one possibly cut by the engine's cap).
    """

    def __init__(self, slices: list[TrainingSlice], settings: PruningSettings, epochs: int,
                 slices_per_step: int, seed: int = 0):
        self.slices, self.settings, self.epochs = slices, settings, max(1, epochs)
        self.slices_per_step, self.seed = slices_per_step, seed
        self.classes = [[obj.class_name for obj in s.objects] for s in slices]
        self.scores = [np.full(len(s.objects), np.nan) for s in slices]
        self.plan: EpochPlan | None = None
        self.plan_start = 0  # first step of the current plan
        self.history: list[dict] = []  # per planned epoch: slices kept per class, steps

    # ---------------------------------------------------------------- planning
    def _well_learned(self) -> tuple[np.ndarray, np.ndarray]:
        """(scored: slices with every object scored, well: scored and below the policy's threshold)."""
        scored = np.array([not np.isnan(s).any() for s in self.scores])
        if self.settings.policy == "global":
            raw = np.array([s.mean() if ok else np.nan for s, ok in zip(self.scores, scored, strict=True)])
            threshold = np.nanmean(raw) if scored.any() else np.inf
            return scored, scored & (raw < threshold)
        by_class: dict[str, list[float]] = {}
        for names, values in zip(self.classes, self.scores, strict=True):
            for name, value in zip(names, values, strict=True):
                if not np.isnan(value):
                    by_class.setdefault(name, []).append(value)
        means = {name: float(np.mean(v)) for name, v in by_class.items()}
        relative = np.array([
            np.mean([v / max(means[c], 1e-12) for c, v in zip(names, values, strict=True)]) if ok else np.nan
            for names, values, ok in zip(self.classes, self.scores, scored, strict=True)])
        return scored, scored & (relative < 1.0)

    def protected_classes(self) -> set[str]:
        """Classes whose slices are never pruned: the configured ones and the rare ones (see module doc)."""
        counts: dict[str, int] = {}
        for names in self.classes:
            for name in set(names):
                counts[name] = counts.get(name, 0) + 1
        rare = {name for name, n in counts.items() if n < self.settings.rare_class_share * len(self.classes)}
        return set(self.settings.protected_classes) | rare

    def _protect(self, pruned: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Restore pruned slices of protected classes, then until every class keeps ``min_class_share`` of
        its slices."""
        pruned = pruned.copy()
        protected = self.protected_classes()
        for index in np.flatnonzero(pruned):
            if protected & set(self.classes[index]):
                pruned[index] = False
        for name in sorted({c for names in self.classes for c in names}):
            holders = np.array([name in names for names in self.classes])
            allowed = math.floor((1 - self.settings.min_class_share) * holders.sum())
            over = np.flatnonzero(holders & pruned)
            if len(over) > allowed:
                pruned[rng.permutation(over)[: len(over) - allowed]] = False
        return pruned

    def plan_epoch(self, epoch: int) -> EpochPlan:
        """Which slices epoch ``epoch`` visits (shuffled) and their loss weights."""
        rng = np.random.default_rng([self.seed, epoch])
        n = len(self.slices)
        pruned = np.zeros(n, dtype=bool)
        weights = np.ones(n)
        annealing = epoch >= self.epochs - self.annealed_epochs()
        if self.settings.policy != "none" and not annealing:
            _, well = self._well_learned()
            candidates = np.flatnonzero(well)
            pruned[candidates[rng.random(len(candidates)) < self.settings.ratio]] = True
            if self.settings.policy != "global":  # CBDP's class balance (and random's count: CBDP's)
                pruned = self._protect(pruned, rng)
            if self.settings.policy == "random":
                count = int(pruned.sum())
                pruned = np.zeros(n, dtype=bool)
                pruned[rng.choice(n, size=count, replace=False)] = True
            else:
                weights[well & ~pruned] = self.kept_easy_weight()
        order = rng.permutation(np.flatnonzero(~pruned))
        names = sorted({c for cs in self.classes for c in cs})
        total = {c: sum(c in cs for cs in self.classes) for c in names}
        kept = {c: sum(c in self.classes[i] for i in order) for c in names}
        return EpochPlan(epoch, order, weights[order], kept, total)

    def kept_easy_weight(self) -> float:
        """Loss weight of a well-learned slice that stays in its epoch: ``1 / (1 - ratio)`` (InfoBatch's
        unbiased rescaling); 1 at ``ratio`` 1, where the only ones left are those class balance restored."""
        ratio = self.settings.ratio
        return 1.0 / (1.0 - ratio) if ratio < 1 else 1.0

    def annealed_epochs(self) -> int:
        """How many final epochs see all data: ``anneal_fraction`` of them, at least one if it is > 0."""
        if self.settings.anneal_fraction <= 0:
            return 0
        return max(1, round(self.settings.anneal_fraction * self.epochs))

    # ---------------------------------------------------------------- stepping
    def steps_in(self, plan: EpochPlan) -> int:
        return math.ceil(len(plan.order) / self.slices_per_step)

    def batch(self, step: int) -> tuple[list[int], list[float]]:
        """Slice indices and loss weights of ``step`` (planning the next epoch when the current one ends)."""
        if self.plan is None:
            self.plan, self.plan_start = self.plan_epoch(0), 0
            self._log(self.plan)
        while step >= self.plan_start + self.steps_in(self.plan):
            self.plan_start += self.steps_in(self.plan)
            self.plan = self.plan_epoch(self.plan.epoch + 1)
            self._log(self.plan)
        first = (step - self.plan_start) * self.slices_per_step
        rows = slice(first, first + self.slices_per_step)
        return self.plan.order[rows].tolist(), self.plan.weights[rows].tolist()

    def _log(self, plan: EpochPlan) -> None:
        self.history = [h for h in self.history if h["epoch"] < plan.epoch]
        self.history.append({"epoch": plan.epoch, "first_step": self.plan_start, "slices": int(len(plan.order)),
                             "steps": self.steps_in(plan), "kept_per_class": plan.kept_per_class})

    def record(self, slice_index: int, object_indices: list[int], losses: list[float]) -> None:
        """Store the latest per-object losses of a slice (the objects prompted this time)."""
        self.scores[slice_index][object_indices] = losses

    # ---------------------------------------------------------------- engine's Schedule protocol
    def progress(self, step: int) -> float:
        """Fraction of the planned epochs done after ``step`` steps (the last planned epoch by its steps)."""
        if self.plan is None:
            return 0.0
        within = (step - self.plan_start) / max(1, self.steps_in(self.plan))
        return min(1.0, (self.plan.epoch + min(1.0, within)) / self.epochs)

    def finished(self, step: int) -> bool:
        if self.plan is None:
            return False
        return self.plan.epoch >= self.epochs - 1 and step >= self.plan_start + self.steps_in(self.plan)

    def iterations_full(self) -> int:
        """Steps the same epochs would take without pruning."""
        return self.epochs * math.ceil(len(self.slices) / self.slices_per_step)

    def state_dict(self) -> dict:
        flat = np.concatenate(self.scores) if self.scores else np.zeros(0)
        state = {"scores": flat.tolist(), "plan_start": self.plan_start, "history": self.history}
        if self.plan is not None:  # the plan itself: replanning from later scores would differ
            state["plan"] = {"epoch": self.plan.epoch, "order": self.plan.order.tolist(),
                             "weights": self.plan.weights.tolist(), "kept_per_class": self.plan.kept_per_class,
                             "total_per_class": self.plan.total_per_class}
        return state

    def load_state_dict(self, state: dict) -> None:
        flat = np.asarray(state["scores"], dtype=np.float64)
        sizes = np.cumsum([len(s) for s in self.scores])[:-1]
        self.scores = [np.array(part) for part in np.split(flat, sizes)]
        self.history = list(state["history"])
        self.plan_start = int(state["plan_start"])
        plan = state.get("plan")
        self.plan = None if plan is None else EpochPlan(
            int(plan["epoch"]), np.asarray(plan["order"], dtype=np.int64), np.asarray(plan["weights"]),
            dict(plan["kept_per_class"]), dict(plan["total_per_class"]))
