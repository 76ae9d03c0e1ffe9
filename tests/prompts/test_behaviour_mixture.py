"""The behaviour mixture: one behaviour per region by weight, every region prompted as its behaviour says."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from samadapt.prompts.behaviour_mixture import (
    CORRECTION_BEHAVIOURS,
    FIRST_BEHAVIOURS,
    BehaviourMixture,
    correction_mixture,
    first_mixture,
)
from samadapt.prompts.region_prompts import RegionPrompts


def _masks(n: int = 6) -> torch.Tensor:
    m = torch.zeros(n, 64, 64, dtype=torch.bool)
    for i in range(n):
        m[i, 4 + 9 * (i % 6) : 11 + 9 * (i % 6), 5 : 20 + 6 * (i % 3)] = True
    return m


def test_draws_follow_the_weights_and_zero_switches_off():
    mixture = first_mixture({"box_tight": 3, "click_centre": 1, "box_loose": 0})
    counts = Counter(mixture.draw(4000, torch.Generator().manual_seed(0)))
    assert set(counts) == {"box_tight", "click_centre"}
    assert 2.6 < counts["box_tight"] / counts["click_centre"] < 3.4


def test_every_region_gets_the_prompt_of_its_own_behaviour():
    masks = _masks(12)
    prompts, names = first_mixture().first_prompts(masks, torch.Generator().manual_seed(1), masks)
    assert len(names) == 12 and len(set(names)) > 3
    for i, name in enumerate(names):
        assert bool(prompts.has_box[i]) == name.startswith("box_")
        assert (prompts.clicks[i] == 0) == name.startswith("box_")
    again, names_again = first_mixture().first_prompts(masks, torch.Generator().manual_seed(1), masks)
    assert names == names_again and torch.equal(prompts.points, again.points) and torch.equal(prompts.boxes,
                                                                                              again.boxes)


def test_a_single_behaviour_mixture_equals_the_behaviour_itself():
    masks = _masks()
    for name, behaviour in FIRST_BEHAVIOURS.items():
        generator = torch.Generator().manual_seed(2)
        mixture = BehaviourMixture({name: 1.0}, FIRST_BEHAVIOURS)
        mixture.draw(len(masks), generator)  # the mixture draws first, then the behaviour runs
        expected = behaviour(masks, generator, masks)
        got, _ = mixture.first_prompts(masks, torch.Generator().manual_seed(2), masks)
        assert torch.equal(got.boxes[got.has_box], expected.boxes[expected.has_box]), name
        assert torch.equal(got.points[:, : expected.points.shape[1]], expected.points), name


def test_corrections_mix_the_users():
    truth = _masks()
    prediction = torch.roll(truth, 3, dims=2)
    points, labels, names = correction_mixture().corrections(prediction, truth, torch.Generator().manual_seed(0))
    assert points.shape == (6, 2) and set(names) <= set(CORRECTION_BEHAVIOURS)
    assert torch.equal(labels, truth[torch.arange(6), points[:, 1].long(), points[:, 0].long()].long())


def test_bad_weights_name_the_known_behaviours():
    with pytest.raises(ValueError, match="known: box_tight"):
        first_mixture({"box_tigth": 1})
    with pytest.raises(ValueError, match="every weight is 0"):
        first_mixture({"box_tight": 0})
    with pytest.raises(ValueError, match=">= 0"):
        correction_mixture({"largest_error": -1})


def test_region_prompts_merge_pads_clicks():
    a = RegionPrompts.from_points(torch.ones(2, 3, 2), torch.ones(2, 3, dtype=torch.long))
    b = RegionPrompts.from_boxes(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    merged = RegionPrompts.merge([a, b], [torch.tensor([0, 2]), torch.tensor([1])], 3)
    assert merged.labels.tolist() == [[1, 1, 1], [-1, -1, -1], [1, 1, 1]]
    assert merged.has_box.tolist() == [False, True, False] and merged.boxes[1].tolist() == [1, 2, 3, 4]
    assert merged.ambiguous.tolist() == [False, False, False]
    assert merged.with_clicks(torch.zeros(3, 2), torch.tensor([1, 1, -1])).clicks.tolist() == [4, 1, 3]
