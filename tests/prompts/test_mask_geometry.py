"""Distance transforms, components and neighbours of a batch of masks, checked against scipy mask by mask."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from samadapt.prompts.mask_geometry import (
    distance_inside,
    distance_outside,
    interior_points,
    largest_component,
    nearest_neighbours,
    value_at,
)


def _random_masks(n: int = 5, size: int = 40, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=bool)
    for i in range(n):
        for _ in range(3):
            y, x = rng.integers(0, size - 6, 2)
            h, w = rng.integers(2, 14, 2)
            masks[i, y : y + h, x : x + w] = True
    masks[-1] = False  # an empty one
    masks[0, :, :4] = True  # touching the border
    return torch.from_numpy(masks)


def test_distances_match_scipy_mask_by_mask_with_the_border_as_background():
    masks = _random_masks()
    inside, outside = distance_inside(masks), distance_outside(masks)
    for i, mask in enumerate(masks.numpy()):
        expected = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
        np.testing.assert_allclose(inside[i].numpy(), expected, rtol=1e-6)
        if mask.any():
            np.testing.assert_allclose(outside[i].numpy(), ndimage.distance_transform_edt(~mask), rtol=1e-6)
        else:
            assert torch.isinf(outside[i]).all()
    assert float(inside[0, :, 0].max()) == 1.0  # one pixel from the border


def test_interior_point_is_the_distance_maximum():
    masks = _random_masks()
    points = interior_points(masks)
    distance = distance_inside(masks)
    for i in range(masks.shape[0] - 1):
        x, y = int(points[i, 0]), int(points[i, 1])
        assert masks[i, y, x] and distance[i, y, x] == distance[i].max()
    assert points[-1].tolist() == [20.5, 20.5]  # the empty mask: the image centre
    assert value_at(masks, points)[:-1].all()


def test_largest_component_per_mask():
    masks = _random_masks()
    chosen, area = largest_component(masks)
    for i, mask in enumerate(masks.numpy()):
        labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
        if count == 0:
            assert area[i] == 0 and not chosen[i].any()
            continue
        sizes = np.bincount(labels.ravel())[1:]
        assert area[i] == sizes.max() and np.array_equal(chosen[i].numpy(), labels == sizes.argmax() + 1)


def test_neighbours_are_the_nearest_disjoint_objects():
    s = torch.zeros(4, 32, 32, dtype=torch.bool)
    s[0, 4:20, 4:14] = True  # organ
    s[1, 8:12, 6:10] = True  # its lesion (nested): never a neighbour of the organ
    s[2, 4:20, 16:24] = True  # adjacent organ, 2 px away
    s[3, 26:30, 4:30] = True  # farther organ
    neighbours = nearest_neighbours(s, s)
    assert torch.equal(neighbours[0], s[2]) and torch.equal(neighbours[2], s[0])
    assert torch.equal(neighbours[1], s[2])  # the lesion's nearest disjoint object (its organ overlaps it)
    alone = nearest_neighbours(s[:1], s[:2])
    assert not alone.any()
