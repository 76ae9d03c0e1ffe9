"""CBDP and its baselines: who is pruned, how the rest is weighted, class balance, annealing, resume."""

from __future__ import annotations

import numpy as np
import pytest

from samadapt.data.prepared import SliceObject
from samadapt.errors import ConfigError
from samadapt.training.pruning import EpochPlanner, PruningSettings
from samadapt.training.slice_data import TrainingSlice


def _slices(classes_per_slice: list[list[str]]) -> list[TrainingSlice]:
    out = []
    for i, names in enumerate(classes_per_slice):
        objs = tuple(SliceObject("c", i, name, k + 1, 0, (k + 1,), 10, (0, 0, 2, 2)) for k, name in enumerate(names))
        out.append(TrainingSlice("c", i, objs))
    return out


def _scored(policy: str, **kw) -> EpochPlanner:
    """20 'easy' slices (class A, losses 0.1-0.2) and 20 'hard' ones (class B, losses 1-2)."""
    planner = EpochPlanner(_slices([["A"]] * 20 + [["B"]] * 20), PruningSettings(policy, **kw), epochs=8,
                           slices_per_step=4, seed=0)
    rng = np.random.default_rng(0)
    for i in range(20):
        planner.record(i, [0], [rng.uniform(0.1, 0.2)])
        planner.record(20 + i, [0], [rng.uniform(1.0, 2.0)])
    return planner


def _pruned(plan, n=40) -> set[int]:
    return set(range(n)) - set(plan.order.tolist())


def test_cbdp_prunes_within_each_class_and_reweights_the_kept_easy_ones():
    planner = _scored("class", ratio=0.5, min_class_share=0.0)
    plan = planner.plan_epoch(1)
    pruned = _pruned(plan)
    assert any(i < 20 for i in pruned) and any(i >= 20 for i in pruned)  # both classes lose easy slices
    _, well = planner._well_learned()
    assert pruned <= set(np.flatnonzero(well).tolist())  # only well-learned slices are pruned
    weights = dict(zip(plan.order.tolist(), plan.weights.tolist(), strict=True))
    for index, weight in weights.items():
        assert weight == (2.0 if well[index] else 1.0)


def test_global_threshold_prunes_only_the_easy_class():
    pruned = _pruned(_scored("global", ratio=0.5).plan_epoch(1))
    assert pruned and all(i < 20 for i in pruned)


def test_random_pruning_takes_as_many_slices_without_reweighting():
    cbdp = _scored("class", ratio=0.5, min_class_share=0.0).plan_epoch(1)
    rand = _scored("random", ratio=0.5).plan_epoch(1)
    assert len(rand.order) == len(cbdp.order)
    assert set(rand.weights.tolist()) == {1.0}


def test_class_share_and_protected_classes_bound_the_pruning():
    keep_all = _scored("class", ratio=0.9, min_class_share=1.0).plan_epoch(1)
    assert len(keep_all.order) == 40
    share = _scored("class", ratio=0.9, min_class_share=0.8).plan_epoch(1)
    assert share.kept_per_class["A"] >= 16 and share.kept_per_class["B"] >= 16
    protected = _scored("class", ratio=0.9, min_class_share=0.0, protected_classes=("B",)).plan_epoch(1)
    assert protected.kept_per_class["B"] == 20 and protected.kept_per_class["A"] < 20


def test_unscored_slices_and_annealing_epochs_are_complete():
    planner = EpochPlanner(_slices([["A"]] * 8), PruningSettings("class", min_class_share=0.0), epochs=8,
                           slices_per_step=4)
    assert len(planner.plan_epoch(0).order) == 8  # nothing scored yet
    scored = _scored("class", ratio=0.5, min_class_share=0.0)
    assert len(scored.plan_epoch(6).order) < 40
    assert len(scored.plan_epoch(7).order) == 40  # the last 12.5% of 8 epochs: all data


def test_steps_follow_the_plans_and_the_run_ends_after_its_epochs():
    planner = EpochPlanner(_slices([["A"]] * 10), PruningSettings("none"), epochs=2, slices_per_step=4)
    batches = [planner.batch(step)[0] for step in range(6)]
    assert [len(b) for b in batches] == [4, 4, 2, 4, 4, 2]
    assert sorted(sum(batches[:3], [])) == list(range(10)) and sorted(sum(batches[3:], [])) == list(range(10))
    assert not planner.finished(5) and planner.finished(6)
    assert planner.progress(6) == pytest.approx(1.0) and planner.iterations_full() == 6


def test_state_round_trip_mid_epoch_continues_identically():
    a = _scored("class", ratio=0.5, min_class_share=0.0)
    for step in range(12):
        a.batch(step)
    b = _scored("class", ratio=0.5, min_class_share=0.0)
    b.load_state_dict(a.state_dict())
    for step in range(12, 40):
        assert a.batch(step) == b.batch(step)
        for planner in (a, b):  # the same training feedback reaches both
            index = planner.batch(step)[0][0] if planner.batch(step)[0] else 0
            planner.record(index, [0], [0.05 * (step % 7)])
    assert a.history == b.history


def test_unknown_policy_is_refused():
    with pytest.raises(ConfigError, match="pruning setting policy='smart': use one of none, class"):
        PruningSettings("smart")
    with pytest.raises(ConfigError, match="pruning setting ratio=1.5"):
        PruningSettings("class", ratio=1.5)
    assert PruningSettings("class", protected_classes=["lesion"]).protected_classes == ("lesion",)


def test_rare_classes_are_never_pruned_by_cbdp_but_are_by_random():
    """A lesion class on 3 of 40 slices (7.5%, under the 10% rare share), always easy: CBDP keeps all of
    its slices, random pruning of the same count does not protect it."""
    planner = EpochPlanner(_slices([["A"]] * 37 + [["A", "lesion"]] * 3), PruningSettings("class", ratio=1.0,
                           min_class_share=0.0), epochs=8, slices_per_step=4, seed=0)
    for i in range(40):
        planner.record(i, list(range(len(planner.slices[i].objects))), [0.1, 0.01] if i >= 37 else [0.1 + 0.01 * i])
    assert planner.protected_classes() == {"lesion"}
    plan = planner.plan_epoch(1)
    assert plan.kept_per_class["lesion"] == 3 and len(plan.order) < 40
    assert set(plan.weights.tolist()) == {1.0}  # ratio 1: nothing left to rescale
    unprotected = EpochPlanner(planner.slices, PruningSettings("class", ratio=1.0, min_class_share=0.0,
                               rare_class_share=0.0), epochs=8, slices_per_step=4, seed=0)
    unprotected.load_state_dict(planner.state_dict())
    assert unprotected.protected_classes() == set() and unprotected.plan_epoch(1).kept_per_class["lesion"] < 3
    # random pruning matches CBDP's count after its protection, and ignores the protection itself
    rand = EpochPlanner(planner.slices, PruningSettings("random", ratio=1.0, min_class_share=0.0), epochs=8,
                        slices_per_step=4, seed=0)
    rand.load_state_dict(planner.state_dict())
    assert len(rand.plan_epoch(1).order) == len(plan.order)
    assert any(len(rand.plan_epoch(e).order) == len(planner.plan_epoch(e).order)
               and rand.plan_epoch(e).kept_per_class["lesion"] < 3 for e in range(1, 7))
