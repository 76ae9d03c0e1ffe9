"""Box behaviours keep their geometric promises, on a batch at once, driven only by the generator."""

from __future__ import annotations

import pytest
import torch

from samadapt.prompts.box_behaviours import LooseBox, NeighbourBox, NoisyBox, PartialBox, ShiftedBox, TightBox
from samadapt.prompts.boxes import boxes_from_masks

SIZE = 96


def _masks() -> torch.Tensor:
    m = torch.zeros(6, SIZE, SIZE, dtype=torch.bool)
    m[0, 10:40, 10:30] = True
    m[1, 10:40, 34:60] = True  # next to 0
    m[2, 50:90, 5:90] = True
    m[3, 60:70, 20:35] = True  # a lesion inside 2
    m[4, 0:12, 70:96] = True  # at the border
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    m[5] = ((yy - 25) ** 2 + (xx - 80) ** 2) < 64  # a disc
    return m


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _contains(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    return (outer[:, :2] <= inner[:, :2] + 1e-4).all(1) & (outer[:, 2:] >= inner[:, 2:] - 1e-4).all(1)


def _in_frame(boxes: torch.Tensor) -> bool:
    return bool((boxes >= 0).all() and (boxes <= SIZE - 1).all() and (boxes[:, 2:] > boxes[:, :2]).all())


def test_tight_box_is_the_mask_box():
    prompts = TightBox()(_masks(), _gen())
    assert torch.equal(prompts.boxes, boxes_from_masks(_masks())) and prompts.has_box.all()
    assert prompts.points.shape == (6, 0, 2)


def test_loose_box_contains_the_tight_one_with_a_size_relative_margin():
    masks, tight = _masks(), boxes_from_masks(_masks())
    behaviour = LooseBox(margin=(0.1, 0.3))
    boxes = behaviour(masks, _gen()).boxes
    assert _contains(boxes, tight).all() and _in_frame(boxes)
    w, h = tight[:, 2] - tight[:, 0], tight[:, 3] - tight[:, 1]
    grow = torch.stack([tight[:, 0] - boxes[:, 0], tight[:, 1] - boxes[:, 1],
                        boxes[:, 2] - tight[:, 2], boxes[:, 3] - tight[:, 3]], 1)
    extent = torch.stack([w, h, w, h], 1)
    inside = torch.stack([boxes[:, 0] > 0, boxes[:, 1] > 0, boxes[:, 2] < SIZE - 1, boxes[:, 3] < SIZE - 1], 1)
    ratio = grow / extent
    assert (ratio[inside] >= 0.1 - 1e-4).all() and (ratio[inside] <= 0.3 + 1e-4).all()
    assert not torch.equal(boxes, behaviour(masks, _gen(1)).boxes)


def test_shifted_box_keeps_its_size_moves_within_range_and_overlaps_the_object():
    masks, tight = _masks(), boxes_from_masks(_masks())
    boxes = ShiftedBox(shift=(0.2, 0.3))(masks, _gen()).boxes
    assert _in_frame(boxes)
    w, h = tight[:, 2] - tight[:, 0], tight[:, 3] - tight[:, 1]
    unclipped = torch.isclose(boxes[:, 2] - boxes[:, 0], w) & torch.isclose(boxes[:, 3] - boxes[:, 1], h)
    assert unclipped.sum() >= 4
    move = torch.sqrt(((boxes[:, 0] - tight[:, 0]) / w) ** 2 + ((boxes[:, 1] - tight[:, 1]) / h) ** 2)
    assert ((move[unclipped] >= 0.2 - 1e-4) & (move[unclipped] <= 0.3 + 1e-4)).all()
    ys, xs = torch.arange(SIZE)[:, None], torch.arange(SIZE)[None]
    for box, mask in zip(boxes, masks, strict=True):
        inside = (xs >= box[0]) & (xs <= box[2]) & (ys >= box[1]) & (ys <= box[3])
        assert (inside & mask).any()


def test_partial_box_lies_inside_the_tight_box_and_cuts_the_object():
    masks, tight = _masks(), boxes_from_masks(_masks())
    boxes = PartialBox(cut=(0.15, 0.35))(masks, _gen()).boxes
    assert _contains(tight, boxes).all() and _in_frame(boxes)
    ys, xs = torch.arange(SIZE)[:, None], torch.arange(SIZE)[None]
    for box, mask in zip(boxes, masks, strict=True):
        inside = (xs >= box[0]) & (xs <= box[2]) & (ys >= box[1]) & (ys <= box[3])
        left_out = (mask & ~inside).sum() / mask.sum()
        assert 0.05 < left_out < 0.5  # a real part of the object, never most of it


def test_noisy_box_is_sams_noise_capped():
    masks, tight = _masks(), boxes_from_masks(_masks())
    boxes = NoisyBox(std_fraction=0.1, max_shift_px=3.0)(masks, _gen()).boxes
    assert (boxes - tight).abs().max() <= 3.0 + 1e-4 and _in_frame(boxes)
    assert not torch.equal(boxes, tight)


def test_neighbour_box_adds_part_of_the_nearest_neighbour():
    masks, tight = _masks(), boxes_from_masks(_masks())
    boxes = NeighbourBox(reach=(0.1, 0.3))(masks[:2], _gen(), slice_masks=masks).boxes
    assert _contains(boxes, tight[:2]).all()
    ys, xs = torch.arange(SIZE)[:, None], torch.arange(SIZE)[None]
    for box, neighbour in zip(boxes, (masks[1], masks[0]), strict=True):
        inside = (xs >= box[0]) & (xs <= box[2]) & (ys >= box[1]) & (ys <= box[3])
        assert (inside & neighbour).any() and not (neighbour & ~inside).sum() == 0  # part of it, not all
    # without the other objects of the slice: a loose box instead
    alone = NeighbourBox(fallback=LooseBox(margin=(0.2, 0.2)))(masks[:2], _gen()).boxes
    w, h = tight[:2, 2] - tight[:2, 0], tight[:2, 3] - tight[:2, 1]
    torch.testing.assert_close(alone[:, 2] - alone[:, 0], 1.4 * w)
    torch.testing.assert_close(alone[:, 3] - alone[:, 1], 1.4 * h)


@pytest.mark.parametrize("behaviour", [LooseBox(), ShiftedBox(), PartialBox(), NoisyBox(), NeighbourBox()])
def test_the_generator_is_the_only_randomness(behaviour):
    masks = _masks()
    torch.manual_seed(0)
    first = behaviour(masks, _gen(7), masks).boxes
    torch.manual_seed(1)  # global state changes nothing
    assert torch.equal(first, behaviour(masks, _gen(7), masks).boxes)
    assert first.shape == (6, 4)


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="margin"):
        LooseBox(margin=(0.3, 0.1))
    with pytest.raises(ValueError, match="cut"):
        PartialBox(cut=(0.2, 1.0))
