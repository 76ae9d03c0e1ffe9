"""benchmarks/cbdp_real.py's arithmetic: the paired per-object difference of two models (mean over set-classes,
bootstrap over patients) and the steps that make a pruned run plan the same epochs as the full one."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def cbdp_real():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("cbdp_real")
    finally:
        sys.path.remove(str(BENCHMARKS))


def scores(entries: dict[tuple[str, str, str], list[float]]) -> dict[tuple, float]:
    """``{(case_id, slice, class, instance): dice}`` from ``{(set, patient, class): [dice per object]}``."""
    return {(f"{key}-{patient}-{k}", "0", name, str(k)): value
            for (key, patient, name), values in entries.items() for k, value in enumerate(values)}


def test_the_paired_difference_averages_each_set_class_then_the_set_classes(cbdp_real):
    full = scores({("msd09", "1", "spleen"): [0.8, 0.9], ("msd09", "2", "spleen"): [0.7],
                   ("curvas", "3", "liver"): [0.9, 0.9, 0.9, 0.9]})
    pruned = scores({("msd09", "1", "spleen"): [0.9, 0.9], ("msd09", "2", "spleen"): [0.9],
                     ("curvas", "3", "liver"): [0.8, 0.8, 0.8, 0.8]})
    found = cbdp_real.paired_difference(full, pruned)
    # spleen: (0.1 + 0 + 0.2) / 3 = +0.1; liver: -0.1 for each object; mean over the two set-classes: 0
    # the JSON keeps two decimals of Dice x100
    assert found["mean_over_set_classes_x100"] == pytest.approx(0.0, abs=0.005)
    assert found["mean_over_objects_x100"] == pytest.approx(100 * (0.3 - 0.4) / 7, abs=0.005)
    assert (found["objects"], found["patients"], found["objects_better"], found["objects_worse"]) == (7, 3, 2, 4)
    low, high = found["ci95_over_patients_x100"]
    assert low < 0 < high  # resamples without patient 3 are spleen only (> 0), without 1 and 2 liver only (< 0)


def test_a_constant_difference_has_no_spread(cbdp_real):
    full = scores({("msd02", str(p), "left_atrium"): [0.5, 0.6] for p in range(5)})
    pruned = {key: value + 0.03 for key, value in full.items()}
    found = cbdp_real.paired_difference(full, pruned)
    assert found["mean_over_set_classes_x100"] == pytest.approx(3.0, abs=0.005)
    assert found["ci95_over_patients_x100"] == pytest.approx([3.0, 3.0], abs=0.005)


def test_models_scored_on_different_objects_are_refused(cbdp_real):
    full = scores({("msd09", "1", "spleen"): [0.8, 0.9]})
    with pytest.raises(ValueError, match="different objects"):
        cbdp_real.paired_difference(full, dict(list(full.items())[:1]))


def test_steps_give_the_pruned_run_the_same_epochs(cbdp_real):
    assert cbdp_real.steps_for(4, 111, 4) == 112  # 28 steps an epoch, the last one of 3 slices
    assert cbdp_real.steps_for(3, 9, 3) == 9
    with pytest.raises(ValueError, match="another number of epochs"):
        cbdp_real.steps_for(3, 9, 4)  # 3 steps of 4 an epoch: 9 steps would be planned as 4 epochs
