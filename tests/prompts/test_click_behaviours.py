"""Click behaviours keep their promises: centre at the distance maximum, clicks inside (or on a neighbour)."""

from __future__ import annotations

import pytest
import torch

from samadapt.prompts.click_behaviours import (
    BoundaryClick,
    CentreClick,
    MultiClick,
    NegativeNeighbourClick,
    RandomClick,
)
from samadapt.prompts.mask_geometry import distance_inside, value_at

SIZE = 80


def _masks() -> torch.Tensor:
    m = torch.zeros(4, SIZE, SIZE, dtype=torch.bool)
    m[0, 10:40, 10:30] = True
    m[1, 10:40, 33:60] = True  # next to 0
    m[2, 50:75, 5:75] = True
    m[3, 55:60, 20:26] = True  # a lesion inside 2
    return m


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _at(masks: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    return value_at(masks, points)


def test_centre_click_is_the_distance_transform_maximum():
    masks = _masks()
    prompts = CentreClick()(masks, _gen())
    distance = distance_inside(masks)
    points = prompts.points[:, 0]
    assert prompts.labels.tolist() == [[1]] * 4 and not prompts.has_box.any()
    for i in range(4):
        x, y = int(points[i, 0]), int(points[i, 1])
        assert distance[i, y, x] == distance[i].max()
    assert torch.equal(points, CentreClick()(masks, _gen(5)).points[:, 0])  # deterministic


def test_random_and_boundary_clicks_fall_inside_and_boundary_ones_near_the_edge():
    masks = _masks()
    distance = distance_inside(masks)
    for seed in range(5):
        random_points = RandomClick()(masks, _gen(seed)).points[:, 0]
        assert _at(masks, random_points).all()
        edge = BoundaryClick(band=0.2)(masks, _gen(seed)).points[:, 0]
        assert _at(masks, edge).all()
        depth = distance[torch.arange(4), edge[:, 1].long(), edge[:, 0].long()]
        assert (depth <= torch.clamp(0.2 * distance.flatten(1).max(1).values, min=1.0)).all()
    assert not torch.equal(RandomClick()(masks, _gen(0)).points, RandomClick()(masks, _gen(1)).points)


def test_multi_click_gives_several_distinct_positive_clicks_inside():
    masks = _masks()
    prompts = MultiClick(count=(2, 4))(masks, _gen())
    counts = prompts.clicks
    assert ((counts >= 2) & (counts <= 4)).all() and prompts.points.shape[1] == 4
    for i in range(4):
        real = prompts.labels[i] == 1
        pts = prompts.points[i, real]
        assert value_at(masks[i : i + 1].expand(len(pts), -1, -1), pts).all()
        assert len({tuple(p.tolist()) for p in pts}) == len(pts)
        assert (prompts.labels[i, ~real] == -1).all()
    tiny = torch.zeros(1, SIZE, SIZE, dtype=torch.bool)
    tiny[0, 5, 5] = True  # one pixel: one click, the rest padding
    assert MultiClick(count=(3, 3))(tiny, _gen()).clicks.tolist() == [1]


def test_negative_click_lands_outside_the_object_on_its_neighbour():
    masks = _masks()
    for seed in range(5):
        prompts = NegativeNeighbourClick()(masks[:2], _gen(seed), slice_masks=masks)
        assert prompts.labels.tolist() == [[1, 0], [1, 0]]
        positive, negative = prompts.points[:, 0], prompts.points[:, 1]
        assert _at(masks[:2], positive).all() and not _at(masks[:2], negative).any()
        assert _at(masks[[1, 0]], negative).all()  # on the adjacent organ
    # no neighbour at all: a negative click on the background just outside the object
    alone = NegativeNeighbourClick()(masks[2:3], _gen(), slice_masks=masks[2:4])
    negative = alone.points[:, 1]
    assert not _at(masks[2:3], negative).any() and not _at(masks[3:4], negative).any()


@pytest.mark.parametrize("behaviour", [RandomClick(), BoundaryClick(), MultiClick(), NegativeNeighbourClick()])
def test_the_generator_is_the_only_randomness(behaviour):
    masks = _masks()
    torch.manual_seed(0)
    first = behaviour(masks, _gen(3), masks)
    torch.manual_seed(1)
    again = behaviour(masks, _gen(3), masks)
    assert torch.equal(first.points, again.points) and torch.equal(first.labels, again.labels)
