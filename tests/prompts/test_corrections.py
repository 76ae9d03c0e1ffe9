"""Correction clicks: RITM's largest-error interior, SAM's random error pixel, error guidance, GT-free suggestions."""

from __future__ import annotations

import torch
from scipy import ndimage

from samadapt.prompts.corrections import (
    LargestErrorClick,
    RandomErrorClick,
    largest_error_region,
    previous_logits_prompt,
    suggested_clicks,
)
from samadapt.prompts.mask_geometry import distance_inside, value_at

SIZE = 64


def _case() -> tuple[torch.Tensor, torch.Tensor]:
    """Truth and prediction of 3 objects: 0 misses a big part (FN wins), 1 spills a lot (FP wins), 2 perfect."""
    truth = torch.zeros(3, SIZE, SIZE, dtype=torch.bool)
    pred = torch.zeros_like(truth)
    truth[0, 10:40, 10:40] = True
    pred[0, 10:40, 10:25] = True  # misses columns 25..39 (450 px)
    pred[0, 5:8, 10:20] = True  # small spill (30 px)
    truth[1, 20:30, 20:30] = True
    pred[1, 20:30, 20:30] = True
    pred[1, 40:60, 5:50] = True  # big spill (900 px)
    pred[1, 20:30, 30:32] = True  # small spill
    truth[2, 5:15, 5:15] = True
    pred[2] = truth[2]
    return truth, pred


def test_ritm_click_is_the_interior_of_the_largest_error_region():
    truth, pred = _case()
    points, labels = LargestErrorClick()(pred, truth, torch.Generator())
    assert labels.tolist() == [1, 0, 1]
    region, positive = largest_error_region(pred, truth)
    assert positive.tolist()[:2] == [True, False]
    assert value_at(region[:2], points[:2]).all()
    for i in range(2):
        labelled, _ = ndimage.label((truth[i] ^ pred[i]).numpy(), structure=torch.ones(3, 3).numpy())
        x, y = int(points[i, 0]), int(points[i, 1])
        component = labelled == labelled[y, x]
        assert component.sum() == region[i].sum()  # the click's component is the largest error region
        assert distance_inside(region[i : i + 1])[0, y, x] == distance_inside(region[i : i + 1]).max()
    assert value_at(truth[2:], points[2:]).all()  # no error: a confirming positive click inside


def test_random_error_click_lies_in_the_error_with_the_truthful_label():
    truth, pred = _case()
    for seed in range(5):
        points, labels = RandomErrorClick()(pred, truth, torch.Generator().manual_seed(seed))
        error = value_at(truth ^ pred, points)
        assert error[:2].all()
        assert torch.equal(labels, value_at(truth, points).long())


def test_guided_clicks_follow_the_guide_and_keep_truthful_labels():
    truth, pred = _case()
    guide = torch.zeros_like(truth)
    guide[0, 12:16, 12:16] = True  # a (wrong) guess inside the object: the click there is positive
    guide[1, 50:55, 5:10] = True  # inside the spill: negative
    use = torch.tensor([True, True, True])  # object 2's guide is empty: true error (none) instead
    for user in (LargestErrorClick(), RandomErrorClick()):
        points, labels = user(pred, truth, torch.Generator().manual_seed(0), guide, use)
        assert value_at(guide[:2], points[:2]).all()
        assert labels.tolist() == [1, 0, 1]
    unguided = LargestErrorClick()(pred, truth, torch.Generator(), guide, torch.tensor([False, True, False]))[0]
    assert torch.equal(unguided[0], LargestErrorClick()(pred, truth, torch.Generator())[0][0])


def test_suggested_clicks_need_no_truth():
    _, pred = _case()
    probability = torch.zeros(3, SIZE, SIZE)
    probability[0, 30:38, 30:38] = 0.9  # outside the current mask: a suspected miss
    probability[1, 45:55, 10:20] = 0.8  # inside the current mask: a suspected spill
    probability[2, 7, 7] = 0.3  # nothing above threshold: the most suspect pixel
    points, labels = suggested_clicks(probability, pred)
    assert labels.tolist() == [1, 0, 0]
    assert (probability[torch.arange(3), points[:, 1].long(), points[:, 0].long()] > 0).all()
    assert points[2].tolist() == [7.5, 7.5]


def test_previous_logits_become_a_detached_mask_prompt():
    logits = torch.randn(3, 16, 16, requires_grad=True)
    prompt = previous_logits_prompt(logits * 2)
    assert prompt.shape == (3, 1, 16, 16) and not prompt.requires_grad
