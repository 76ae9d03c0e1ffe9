"""Box prompts: tight boxes (SAM's inclusive convention) and the SAM / uniform box noise."""

from __future__ import annotations

import pytest
import torch

from samadapt.prompts.boxes import (
    boxes_from_masks,
    grow_boxes,
    jitter_boxes_sam,
    jitter_boxes_uniform,
    keep_in_frame,
    masks_from_boxes,
)


def _random_boxes(n: int, image_size: int, min_side: float, max_side: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = min_side + torch.rand(n, generator=g) * (max_side - min_side)
    h = min_side + torch.rand(n, generator=g) * (max_side - min_side)
    x0 = torch.rand(n, generator=g) * (image_size - 1 - w)
    y0 = torch.rand(n, generator=g) * (image_size - 1 - h)
    return torch.stack([x0, y0, x0 + w, y0 + h], dim=1)


def _check_valid(boxes: torch.Tensor, image_size: int) -> None:
    assert boxes.shape[1] == 4
    assert torch.isfinite(boxes).all()
    assert (boxes >= 0).all() and (boxes <= image_size - 1).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()


def test_boxes_from_masks_are_tight_with_inclusive_last_pixel():
    masks = torch.zeros(3, 20, 30, dtype=torch.bool)
    masks[0, 3:8, 10:15] = True  # rows 3..7, columns 10..14
    masks[1, 12, 25] = True  # a single pixel
    boxes = boxes_from_masks(masks)  # masks[2] stays empty
    assert boxes.dtype == torch.float32
    assert boxes.tolist() == [[10, 3, 14, 7], [25, 12, 25, 12], [0, 0, 0, 0]]


def test_boxes_from_masks_accept_non_bool_masks():
    masks = torch.zeros(1, 16, 16, dtype=torch.uint8)
    masks[0, 2:5, 6:9] = 1
    assert boxes_from_masks(masks).tolist() == [[6, 2, 8, 4]]


@pytest.mark.parametrize("image_size", [64, 256, 1024])
def test_sam_jitter_never_moves_a_coordinate_more_than_the_default_cap(image_size):
    cap = 20.0 * image_size / 1024
    boxes = _random_boxes(3000, image_size, min_side=2 * cap + 2, max_side=0.9 * image_size)
    noisy = jitter_boxes_sam(boxes, torch.Generator().manual_seed(1), image_size)
    assert noisy.shape == boxes.shape
    moved = (noisy - boxes).abs()
    assert moved.max() <= cap + 1e-4
    # large boxes (10% of the side >> cap) hit the cap: the default really is 20 px in the 1024 frame
    assert moved.max() >= cap - 1e-4
    _check_valid(noisy, image_size)


def test_sam_jitter_explicit_cap():
    boxes = _random_boxes(2000, 512, min_side=100, max_side=400)
    noisy = jitter_boxes_sam(boxes, torch.Generator().manual_seed(2), 512, max_shift=3.0)
    moved = (noisy - boxes).abs()
    assert moved.max() <= 3.0 + 1e-4
    assert moved.max() >= 2.9


def test_sam_jitter_std_scales_with_box_side():
    image_size = 100_000  # far edges: no clamping
    n = 4000
    gen = torch.Generator().manual_seed(3)
    for side_w, side_h in [(100.0, 300.0), (400.0, 50.0)]:
        boxes = torch.tensor([[50_000.0, 50_000.0, 50_000.0 + side_w, 50_000.0 + side_h]]).repeat(n, 1)
        shift = jitter_boxes_sam(boxes, gen, image_size, std_fraction=0.1, max_shift=1e9) - boxes
        expected = torch.tensor([side_w, side_h, side_w, side_h]) * 0.1
        std = shift.std(dim=0)
        assert torch.allclose(std, expected, rtol=0.08), (std, expected)
        assert shift.mean(dim=0).abs().max() < 0.1 * expected.max()


def test_sam_jitter_is_clamped_and_non_degenerate_at_the_image_border():
    image_size = 64
    corners = [[0, 0, 0, 0], [63, 63, 63, 63], [0, 0, 63, 63], [10, 5, 11, 5]]
    boxes = torch.tensor(corners, dtype=torch.float32).repeat(500, 1)
    noisy = jitter_boxes_sam(boxes, torch.Generator().manual_seed(4), image_size, max_shift=8.0)
    _check_valid(noisy, image_size)


def test_sam_jitter_is_deterministic_given_the_generator():
    boxes = _random_boxes(50, 256, 20, 200)
    a = jitter_boxes_sam(boxes, torch.Generator().manual_seed(7), 256)
    b = jitter_boxes_sam(boxes, torch.Generator().manual_seed(7), 256)
    c = jitter_boxes_sam(boxes, torch.Generator().manual_seed(8), 256)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_uniform_jitter_is_bounded_and_spread_over_the_range():
    image_size, max_px = 256, 10.0
    boxes = _random_boxes(3000, image_size, min_side=2 * max_px + 2, max_side=200)
    noisy = jitter_boxes_uniform(boxes, max_px, torch.Generator().manual_seed(5), image_size)
    moved = noisy - boxes
    assert moved.abs().max() <= max_px + 1e-4
    # uniform on [-max_px, max_px]: reaches close to the bound, mean ~0, std max_px / sqrt(3) (boxes
    # near the border are clamped, so the spread is slightly smaller there)
    assert moved.abs().max() > 0.95 * max_px
    assert moved.mean().abs() < 0.5
    assert 0.85 * max_px / 3**0.5 < moved.std() < 1.05 * max_px / 3**0.5
    _check_valid(noisy, image_size)


def test_uniform_jitter_of_zero_is_the_identity():
    boxes = _random_boxes(20, 128, 5, 100)
    gen = torch.Generator().manual_seed(0)
    before = gen.get_state()
    assert torch.equal(jitter_boxes_uniform(boxes, 0, gen, 128), boxes)
    assert torch.equal(gen.get_state(), before)  # no randomness consumed


def test_uniform_jitter_keeps_thin_boxes_inside_and_non_degenerate():
    thin = [[0, 0, 0, 0], [127, 127, 127, 127], [40, 40, 41, 40]]  # collapse on the far border too
    boxes = torch.tensor(thin, dtype=torch.float32).repeat(300, 1)
    noisy = jitter_boxes_uniform(boxes, 20.0, torch.Generator().manual_seed(9), 128)
    _check_valid(noisy, 128)


def test_keep_in_frame_is_the_one_clamp_rule():
    boxes = torch.tensor([[5.0, 6.0, 20.0, 30.0],  # inside: unchanged
                          [-3.0, -1.0, 70.0, 50.0],  # beyond the frame (height 40, width 64): clamped
                          [10.0, 12.0, 10.2, 8.0],  # collapsed / inverted: keeps x0, y0, one pixel wide / high
                          [63.0, 39.5, 63.0, 45.0]])  # collapsed on the far border: steps back inside
    kept = keep_in_frame(boxes, height=40, width=64)
    assert kept.tolist() == [[5.0, 6.0, 20.0, 30.0], [0.0, 0.0, 63.0, 39.0], [10.0, 12.0, 11.0, 13.0],
                             [62.0, 38.0, 63.0, 39.0]]
    grown = grow_boxes(boxes[:1], torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    assert grown.tolist() == [[4.0, 4.0, 23.0, 34.0]]


def test_masks_from_boxes_fills_exactly_the_box_and_inverts_boxes_from_masks():
    masks = torch.zeros(2, 20, 30, dtype=torch.bool)
    masks[0, 3:9, 5:17] = True  # a rectangle: its box filled is itself
    masks[1, 10, 2] = masks[1, 15, 25] = True  # two pixels: the box spans both
    filled = masks_from_boxes(boxes_from_masks(masks), 20, 30)
    assert torch.equal(filled[0], masks[0])
    assert filled[1].sum() == (15 - 10 + 1) * (25 - 2 + 1)
    assert filled[1, 10, 2] and filled[1, 15, 25] and not filled[1, 9, 2] and not filled[1, 10, 26]
