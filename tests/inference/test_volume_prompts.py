"""3D boxes and clicks in voxel or world coordinates -> per-slice prompts in the display-oriented slice frame."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813

from samadapt.errors import PromptError
from samadapt.inference.volume_prompts import (
    VoxelBox,
    points_in_slice_frame,
    slice_boxes,
    to_voxel_index,
    world_to_index,
)
from samadapt.inference.volume_slices import VolumeSlices
from samadapt.io.volume import Geometry, Volume

OBLIQUE = Geometry((20, 16, 12), (0.8, 1.1, 2.5), (-30.0, 12.0, 100.0),
                   tuple(sitk.VersorTransform((0.3, 0.2, 0.9), 0.4).GetMatrix()))
FLIPPED = Geometry((20, 16, 12), (1.0, 1.0, 3.0), (5.0, -7.0, 40.0), (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))


def test_world_to_index_agrees_with_simpleitk_on_an_oblique_grid():
    image = sitk.Image(list(OBLIQUE.size), sitk.sitkUInt8)
    OBLIQUE.apply_to(image)
    points = np.array([[-30.0, 12.0, 100.0], [-21.5, 20.25, 117.0], [0.0, 0.0, 110.0]])
    expected = np.array([image.TransformPhysicalPointToContinuousIndex(tuple(p)) for p in points])
    np.testing.assert_allclose(world_to_index(points, OBLIQUE), expected, atol=1e-9)


def test_a_world_box_gives_the_voxel_box_of_its_corners():
    image = sitk.Image(list(FLIPPED.size), sitk.sitkUInt8)
    FLIPPED.apply_to(image)
    lo, hi = (2, 3, 4), (9, 11, 7)
    corners = [*image.TransformIndexToPhysicalPoint(lo), *image.TransformIndexToPhysicalPoint(hi)]
    assert VoxelBox.from_corners(corners, FLIPPED, "world") == VoxelBox(lo, hi)
    assert VoxelBox.from_corners([*hi, *lo], FLIPPED, "voxel") == VoxelBox(lo, hi)  # any two opposite corners
    with pytest.raises(PromptError, match="outside"):
        VoxelBox.from_corners([0, 0, 0, 20, 5, 5], FLIPPED, "voxel")  # x index 20 of a 20-wide grid
    with pytest.raises(PromptError, match="6 numbers"):
        VoxelBox.from_corners([0, 0, 5, 5], FLIPPED, "voxel")
    with pytest.raises(PromptError, match="coordinates"):
        to_voxel_index(np.zeros((1, 3)), FLIPPED, "pixels", "box")


@pytest.mark.parametrize("axis", ["axial", "coronal", "sagittal"])
def test_per_slice_boxes_cover_exactly_the_3d_box_on_flipped_grids(axis):
    array = np.zeros(tuple(reversed(FLIPPED.size)), np.int16)
    slices = VolumeSlices.from_volume(Volume(array, FLIPPED), window="1,0", axis=axis)
    box = VoxelBox((2, 3, 4), (9, 11, 7))
    painted = slices.empty_labels()
    per_slice = slice_boxes(box, axis, slices.flips, slices.slice_hw)
    for k, (x0, y0, x1, y1) in per_slice.items():
        mask = np.zeros(slices.slice_hw, bool)
        mask[int(y0) : int(y1) + 1, int(x0) : int(x1) + 1] = True
        slices.paint(painted, k, mask, 1)
    expected = np.zeros_like(painted)
    expected[4:8, 3:12, 2:10] = 1  # (Z, Y, X) = the box's voxels, whatever the display flips were
    np.testing.assert_array_equal(painted, expected)
    assert axis != "axial" or slices.flips == (True, True)  # this grid runs right-to-left and front-to-back


def test_clicks_land_on_one_slice_in_its_frame():
    array = np.zeros(tuple(reversed(FLIPPED.size)), np.int16)
    slices = VolumeSlices.from_volume(Volume(array, FLIPPED), window="1,0")
    k, xy = points_in_slice_frame(np.array([[2, 3, 5], [9, 11, 5]]), "axial", slices.flips, slices.slice_hw)
    h, w = slices.slice_hw
    assert k == 5 and xy.tolist() == [[w - 1 - 2, h - 1 - 3], [w - 1 - 9, h - 1 - 11]]
    with pytest.raises(PromptError, match="one axial slice"):
        points_in_slice_frame(np.array([[2, 3, 5], [9, 11, 6]]), "axial", slices.flips, slices.slice_hw)
