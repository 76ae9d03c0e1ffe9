"""Click prompts: uniform points inside masks and SAM-style error-region correction clicks."""

from __future__ import annotations

import torch

from samadapt.prompts.points import sample_error_clicks, sample_points_in_masks


def _pixel(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``Nx2`` XY float points -> (rows, columns) of the pixels they fall in (floor of the coordinate)."""
    return points[:, 1].floor().long(), points[:, 0].floor().long()


def _random_masks(n: int, h: int, w: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    masks = []
    for _ in range(n):
        cy, cx = torch.rand(2, generator=g) * torch.tensor([h, w])
        ry, rx = 1 + torch.rand(2, generator=g) * torch.tensor([h / 3, w / 3])
        masks.append(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1)
    return torch.stack(masks)


def test_points_lie_inside_their_masks():
    masks = _random_masks(64, 24, 40, seed=0)
    assert masks.flatten(1).any(1).all()
    points = sample_points_in_masks(masks, torch.Generator().manual_seed(1))
    assert points.shape == (64, 2) and points.dtype == torch.float32
    rows, cols = _pixel(points)
    assert masks[torch.arange(64), rows, cols].all()
    # pixel centres
    assert torch.equal(points - points.floor(), torch.full_like(points, 0.5))


def test_points_are_xy_ordered():
    masks = torch.zeros(1, 20, 30, dtype=torch.bool)
    masks[0, 3, 10] = True  # row 3, column 10
    points = sample_points_in_masks(masks, torch.Generator().manual_seed(0))
    assert points.tolist() == [[10.5, 3.5]]


def test_empty_mask_gives_the_image_centre():
    masks = torch.zeros(2, 20, 30, dtype=torch.bool)
    masks[1, 0, 0] = True
    points = sample_points_in_masks(masks, torch.Generator().manual_seed(0))
    assert points.tolist() == [[15.5, 10.5], [0.5, 0.5]]


def test_points_are_uniform_over_the_mask():
    mask = torch.zeros(12, 12, dtype=torch.bool)
    mask[2, 3:7] = True
    mask[8:10, 9:12] = True  # 10 pixels in two pieces
    n = 5000
    points = sample_points_in_masks(mask.expand(n, -1, -1), torch.Generator().manual_seed(2))
    rows, cols = _pixel(points)
    counts = torch.bincount(rows * 12 + cols, minlength=144).reshape(12, 12)
    assert counts[~mask].sum() == 0
    hits = counts[mask].float()
    expected = n / 10
    assert hits.min() > 0.8 * expected and hits.max() < 1.2 * expected
    chi2 = (((hits - expected) ** 2) / expected).sum()
    assert chi2 < 27.9  # 99.9% quantile of chi-square with 9 degrees of freedom


def test_sampling_is_deterministic_given_the_generator():
    masks = _random_masks(16, 32, 32, seed=3)
    a = sample_points_in_masks(masks, torch.Generator().manual_seed(5))
    b = sample_points_in_masks(masks, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_error_clicks_follow_the_kind_of_error():
    h = w = 32
    target = torch.zeros(4, h, w, dtype=torch.bool)
    target[:, 8:24, 8:24] = True
    prediction = target.clone()
    prediction[0, 8:24, 16:24] = False  # 0: false negatives only (right half missed)
    prediction[1, 2:6, 2:30] = True  # 1: false positives only (a stripe above)
    # 2: no error
    prediction[3] = False  # 3: mixed error below
    prediction[3, 12:30, 8:24] = True
    fn = target & ~prediction
    fp = prediction & ~target
    for seed in range(20):
        points, labels = sample_error_clicks(prediction, target, torch.Generator().manual_seed(seed))
        assert points.shape == (4, 2) and labels.shape == (4,) and labels.dtype == torch.long
        rows, cols = _pixel(points)
        assert labels[0] == 1 and fn[0, rows[0], cols[0]]
        assert labels[1] == 0 and fp[1, rows[1], cols[1]]
        assert labels[2] == 1 and target[2, rows[2], cols[2]]
        if labels[3] == 1:
            assert fn[3, rows[3], cols[3]]
        else:
            assert fp[3, rows[3], cols[3]]


def test_mixed_error_clicks_pick_both_kinds_in_proportion_to_their_area():
    target = torch.zeros(1, 20, 20, dtype=torch.bool)
    target[0, 0:10, :] = True
    prediction = torch.zeros_like(target)
    prediction[0, 5:20, :] = True  # 100 FN pixels (rows 0..4), 200 FP pixels (rows 10..19)
    n = 3000
    points, labels = sample_error_clicks(
        prediction.expand(n, -1, -1), target.expand(n, -1, -1), torch.Generator().manual_seed(0)
    )
    positive = labels.float().mean()
    assert 0.29 < positive < 0.38  # expected 1/3
    rows, _ = _pixel(points)
    assert ((rows < 5) == (labels == 1)).all()
    assert ((rows >= 10) == (labels == 0)).all()


def test_empty_target_without_error_gets_a_negative_click_at_the_centre():
    target = torch.zeros(1, 10, 10, dtype=torch.bool)
    points, labels = sample_error_clicks(target.clone(), target, torch.Generator().manual_seed(0))
    assert points.tolist() == [[5.5, 5.5]]
    assert labels.tolist() == [0]
