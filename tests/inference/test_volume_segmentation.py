"""Volumes from 3D prompts: per-slice boxes decoded together, painted in prompt order on the source grid."""

from __future__ import annotations

import numpy as np
import pytest

from samadapt.errors import PromptError
from samadapt.inference.segmenter import Segmenter
from samadapt.inference.volume_prompts import VoxelBox, box_in_slice_frame
from samadapt.inference.volume_segmentation import VolumePrompt, segment_volume


def test_3d_boxes_become_per_slice_boxes_decoded_together(tiny, phantom_volume, liver_mask, phantom_labels, voxel_box):
    segmenter = Segmenter(tiny, encode_batch_size=4)
    slices = segmenter.set_volume(phantom_volume)
    geometry = phantom_volume.geometry
    liver = VoxelBox.from_corners(voxel_box(liver_mask), geometry, "voxel")
    spleen = VoxelBox.from_corners(voxel_box(phantom_labels == 2), geometry, "voxel")
    prompts = [VolumePrompt("liver", 1, box=liver), VolumePrompt("spleen", 7, box=spleen)]
    result = segment_volume(segmenter, prompts)

    liver_slices = set(range(liver.lo[2], liver.hi[2] + 1))
    spleen_slices = set(range(spleen.lo[2], spleen.hi[2] + 1))
    assert result.slices_decoded == len(liver_slices | spleen_slices)
    assert segmenter.encoder_calls == -(-len(liver_slices | spleen_slices) // 4)  # batches of 4 slices
    assert set(np.unique(result.labels)) <= {0, 1, 7}
    for value, box in ((1, liver), (7, spleen)):
        z, y, x = np.nonzero(result.labels == value)
        assert z.size and z.min() >= box.lo[2] and z.max() <= box.hi[2]
    # slice by slice, the volume holds what one batched predict of that slice's boxes gives, later prompt on top
    k = sorted(liver_slices & spleen_slices)[0]
    both = segmenter.predict(boxes=[box_in_slice_frame(b, "axial", slices.flips, slices.slice_hw)
                                    for b in (liver, spleen)], slice_index=k)
    expected = np.zeros(slices.slice_hw, np.uint8)
    expected[both.masks[0, 0]] = 1
    expected[both.masks[1, 0]] = 7
    np.testing.assert_array_equal(slices.labels_slice(result.labels, k), expected)
    assert [o["class"] for o in result.objects] == ["liver", "spleen"] and result.seconds_per_slice > 0


def test_clicks_segment_their_slice_and_propagate_on_request(tiny, phantom_volume, liver_mask):
    segmenter = Segmenter(tiny)
    segmenter.set_volume(phantom_volume)
    z, y, x = np.nonzero(liver_mask)
    key = int(np.bincount(z).argmax())
    inside = np.flatnonzero(z == key)[len(np.flatnonzero(z == key)) // 2]
    click = np.array([[x[inside], y[inside], key]])
    single = segment_volume(segmenter, [VolumePrompt("liver", 1, points=click, labels=np.array([1]))])
    assert set(np.nonzero(single.labels)[0]) == {key}
    followed = segment_volume(segmenter, [VolumePrompt("liver", 1, points=click, labels=np.array([1]), propagate=True)])
    assert len(set(np.nonzero(followed.labels)[0])) > 1 and followed.objects[0]["stops"]


def test_prompts_must_be_well_formed():
    with pytest.raises(PromptError, match="either a box or points"):
        VolumePrompt("liver", 1)
    with pytest.raises(PromptError, match="one label"):
        VolumePrompt("liver", 1, points=np.zeros((2, 3), int), labels=np.array([1]))
    with pytest.raises(PromptError, match="1..65535"):
        VolumePrompt("liver", 0, box=VoxelBox((0, 0, 0), (1, 1, 1)))
