"""Key-slice propagation with the tiny model: it follows an organ through the slices and stops where it ends."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from samadapt.errors import ConfigError, PromptError
from samadapt.inference.propagation import PropagationSettings, box_with_margin, propagate
from samadapt.inference.segmenter import Segmenter
from samadapt.io.volume import Geometry, Volume
from samadapt.overlap import dice
from samadapt.prompts.boxes import boxes_from_masks

DISK_SLICES = range(3, 9)


@pytest.fixture(scope="module")
def disk_volume() -> tuple[Volume, np.ndarray]:
    """A bright disk (150 HU in -100 HU) on slices 3..8 of 12, widest on slice 6; and its mask."""
    yy, xx = np.mgrid[:64, :64]
    image = np.full((12, 64, 64), -100, np.int16)
    truth = np.zeros(image.shape, bool)
    for z in DISK_SLICES:
        radius = 14 - 2 * abs(z - 6)
        truth[z] = (yy - 32) ** 2 + (xx - 30) ** 2 < radius**2
    image[truth] = 150
    return Volume(image, Geometry((64, 64, 12), (2.0, 2.0, 5.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))), truth


def test_propagation_recovers_the_liver_far_beyond_its_key_slice(tiny, phantom_volume, liver_mask):
    segmenter = Segmenter(tiny)
    slices = segmenter.set_volume(phantom_volume)
    truth = liver_mask
    key = int(np.argmax(truth.sum(axis=(1, 2))))
    key_mask = slices.labels_slice(truth.astype(np.uint8), key).astype(bool)
    box = boxes_from_masks(torch.from_numpy(key_mask)[None])[0].numpy()
    result = propagate(segmenter, key, box=box)

    predicted, key_only = slices.empty_labels(), slices.empty_labels()
    for k, mask in result.masks.items():
        slices.paint(predicted, k, mask, 1)
    slices.paint(key_only, key, result.masks[key], 1)
    propagated, baseline = dice(predicted.astype(bool), truth), dice(key_only.astype(bool), truth)
    assert propagated > max(2 * baseline, 0.45), (propagated, baseline)
    covered = sorted(result.masks)
    assert covered == list(range(covered[0], covered[-1] + 1)) and len(covered) >= 6  # one unbroken run
    for k in covered:  # every slice past the key one was prompted by the box of its neighbour's mask
        if k != key:
            neighbour = result.masks[k - 1 if k > key else k + 1]
            np.testing.assert_allclose(result.boxes[k], box_with_margin(neighbour))


def test_propagation_stops_where_the_object_ends(tiny, disk_volume):
    volume, truth = disk_volume
    segmenter = Segmenter(tiny)
    slices = segmenter.set_volume(volume)
    result = propagate(segmenter, 6, box=np.array([16.0, 18.0, 44.0, 46.0]))
    assert sorted(result.masks) == list(DISK_SLICES)
    assert set(result.stops.values()) <= {"intensity changed", "object ended", "lost overlap"}
    for k in DISK_SLICES:
        assert dice(result.masks[k], slices.labels_slice(truth.astype(np.uint8), k).astype(bool)) > 0.7


def test_slice_range_and_max_slices_bound_propagation(tiny, disk_volume):
    segmenter = Segmenter(tiny)
    segmenter.set_volume(disk_volume[0])
    box = np.array([16.0, 18.0, 44.0, 46.0])
    assert sorted(propagate(segmenter, 6, box=box, slice_range=(5, 7)).masks) == [5, 6, 7]
    limited = propagate(segmenter, 6, box=box, settings=PropagationSettings(max_slices=1))
    assert sorted(limited.masks) == [5, 6, 7] and limited.stops == {"up": "max_slices", "down": "max_slices"}
    with pytest.raises(PromptError, match="outside the propagation range"):
        propagate(segmenter, 2, box=box, slice_range=(5, 7))
    with pytest.raises(ConfigError):
        PropagationSettings(margin_fraction=2.0)


def test_box_with_margin_widens_and_clips():
    mask = np.zeros((20, 30), bool)
    mask[5:10, 0:20] = True  # columns 0..19, rows 5..9
    np.testing.assert_allclose(box_with_margin(mask), [0, 5, 19, 9])
    np.testing.assert_allclose(box_with_margin(mask, margin_fraction=0.1, margin_px=1.0), [0, 4, 21, 10])
