"""Ground-truth click sets: positives inside the mask, negatives near it and outside, in the valid region."""

from __future__ import annotations

import torch

from samadapt.prompts.point_sets import fixed_point_labels, negative_regions, sample_point_sets


def _masks() -> torch.Tensor:
    masks = torch.zeros((2, 40, 50), dtype=torch.bool)
    masks[0, 10:20, 12:24] = True  # a rectangle
    masks[1, 30:32, 40:42] = True  # 4 pixels: fewer than 8 positives
    return masks


def _at(masks: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    x, y = points[..., 0].long(), points[..., 1].long()
    return masks[torch.arange(masks.shape[0])[:, None], y, x]


def test_positives_inside_negatives_near_and_outside():
    masks = _masks()
    points, labels = sample_point_sets(masks, 8, 8, torch.Generator().manual_seed(0), valid_hw=(36, 50))
    assert points.shape == (2, 16, 2) and labels.tolist() == [[1] * 8 + [0] * 8] * 2
    assert torch.equal(points, points.floor() + 0.5)  # pixel centres
    assert _at(masks, points[:, :8]).all() and not _at(masks, points[:, 8:]).any()
    near = negative_regions(masks, 0.5, valid_hw=(36, 50))
    assert _at(near, points[:, 8:]).all()
    assert (points[0, 8:, 0] >= 12 - 6).all() and (points[0, 8:, 0] < 24 + 6).all()  # within half a side
    assert (points[:, 8:, 1] < 36).all()  # never in the padding
    assert len({tuple(p) for p in points[0, :8].tolist()}) == 8  # distinct when the mask is large enough


def test_draws_repeat_with_the_seed_and_differ_without():
    masks = _masks()
    a, _ = sample_point_sets(masks, 8, 8, torch.Generator().manual_seed(1))
    b, _ = sample_point_sets(masks, 8, 8, torch.Generator().manual_seed(1))
    c, _ = sample_point_sets(masks, 8, 8, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_fixed_labels_and_an_object_filling_its_surroundings():
    assert fixed_point_labels(2, 3).tolist() == [1, 1, 0, 0, 0]
    masks = torch.zeros((1, 10, 10), dtype=torch.bool)
    masks[0, :, :9] = True  # the ring around the box is only the last column
    points, _ = sample_point_sets(masks, 1, 4, torch.Generator().manual_seed(0))
    assert (points[0, 1:, 0] == 9.5).all()
