"""3D prompts on a volume -> 2D prompts in the slice frame of :class:`~samadapt.inference.volume_slices.VolumeSlices`.

Coordinates of a 3D prompt are either

- ``voxel``: voxel indices ``(x, y, z)`` in SimpleITK / ITK index order (``x`` = last array axis; the
  array is ``(Z, Y, X)``), integers or fractions (rounded to the nearest voxel); or
- ``world``: physical points ``(x, y, z)`` in mm in the volume's patient frame (ITK / DICOM LPS, as
  ``SimpleITK.Image.TransformPhysicalPointToIndex`` reads them), mapped through the geometry's origin,
  spacing and direction: ``index = (D^-1 (p - origin)) / spacing``.

A 3D box is given by two opposite corners and covers every voxel between them (inclusive); in world
coordinates all 8 corners are mapped, so an oblique grid gets the index box that encloses them. Each slice
the box spans gets the box's in-plane rectangle as a 2D XYXY box in that slice's (display-oriented) frame.
Prompts reaching outside the volume are refused, never clipped.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from samadapt.data.orientation import AXES
from samadapt.errors import PromptError
from samadapt.io.volume import Geometry

COORDINATE_SYSTEMS = ("voxel", "world")


def world_to_index(points_mm: np.ndarray, geometry: Geometry) -> np.ndarray:
    """``Nx3`` physical points ``(x, y, z)`` mm -> ``Nx3`` continuous voxel indices ``(x, y, z)``."""
    direction = np.asarray(geometry.direction, dtype=np.float64).reshape(3, 3)
    offsets = np.asarray(points_mm, dtype=np.float64).reshape(-1, 3) - np.asarray(geometry.origin)
    return np.linalg.solve(direction, offsets.T).T / np.asarray(geometry.spacing, dtype=np.float64)


def to_voxel_index(points: np.ndarray, geometry: Geometry, coordinates: str, what: str) -> np.ndarray:
    """``Nx3`` points in ``coordinates`` (voxel or world) -> ``Nx3`` int voxel indices ``(x, y, z)``, checked inside."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if not np.isfinite(points).all():
        raise PromptError(f"{what}: coordinates must be finite numbers")
    if coordinates == "world":
        continuous = world_to_index(points, geometry)
    elif coordinates == "voxel":
        continuous = points
    else:
        raise PromptError(f"{what}: coordinates '{coordinates}' unknown; use one of {', '.join(COORDINATE_SYSTEMS)}")
    index = np.rint(continuous).astype(np.int64)
    size = np.asarray(geometry.size, dtype=np.int64)
    if (index < 0).any() or (index >= size).any():
        shown = continuous.round(2).tolist()
        raise PromptError(f"{what}: {coordinates} point(s) {shown} fall outside the volume (voxel indices "
                          f"0..{(size - 1).tolist()} in x, y, z); check the coordinates and their 'coordinates' field")
    return index


@dataclass(frozen=True)
class VoxelBox:
    """An inclusive box of voxel indices: ``lo`` and ``hi`` as ``(x, y, z)``."""

    lo: tuple[int, int, int]
    hi: tuple[int, int, int]

    @classmethod
    def from_corners(cls, corners: list[float] | np.ndarray, geometry: Geometry, coordinates: str,
                     what: str = "box") -> VoxelBox:
        """From ``[x0, y0, z0, x1, y1, z1]`` (two opposite corners) in voxel or world coordinates."""
        values = np.asarray(corners, dtype=np.float64).reshape(-1)
        if values.size != 6:
            raise PromptError(f"{what}: a 3D box has 6 numbers [x0, y0, z0, x1, y1, z1], got {values.size}")
        a, b = values[:3], values[3:]
        if coordinates == "world":
            cube = np.array([[p[0], p[1], p[2]] for p in itertools.product(*zip(a, b, strict=True))])
            continuous = world_to_index(cube, geometry)
            index = to_voxel_index(np.stack([continuous.min(0), continuous.max(0)]), geometry, "voxel", what)
        else:
            index = to_voxel_index(np.stack([a, b]), geometry, coordinates, what)
        lo, hi = index.min(0), index.max(0)
        return cls(tuple(int(v) for v in lo), tuple(int(v) for v in hi))

    def array_range(self, array_axis: int) -> tuple[int, int]:
        """Inclusive ``(first, last)`` along array axis 0 (Z), 1 (Y) or 2 (X)."""
        index_axis = 2 - array_axis
        return self.lo[index_axis], self.hi[index_axis]


def _in_plane(axis: str) -> tuple[int, int, int]:
    """(slicing array axis, row array axis, column array axis) for slices along ``axis``."""
    slicing = AXES[axis]
    rows, cols = (a for a in range(3) if a != slicing)
    return slicing, rows, cols


def slice_range(box: VoxelBox, axis: str) -> tuple[int, int]:
    """Inclusive ``(first, last)`` slice index of ``box`` along ``axis``."""
    return box.array_range(_in_plane(axis)[0])


def box_in_slice_frame(box: VoxelBox, axis: str, flips: tuple[bool, bool], slice_hw: tuple[int, int]) -> np.ndarray:
    """The in-plane rectangle of ``box`` as a float ``[x0, y0, x1, y1]`` in the display-oriented slice frame."""
    _, rows, cols = _in_plane(axis)
    r0, r1 = box.array_range(rows)
    c0, c1 = box.array_range(cols)
    h, w = slice_hw
    if flips[0]:
        r0, r1 = h - 1 - r1, h - 1 - r0
    if flips[1]:
        c0, c1 = w - 1 - c1, w - 1 - c0
    return np.array([c0, r0, c1, r1], dtype=np.float64)


def slice_boxes(box: VoxelBox, axis: str, flips: tuple[bool, bool], slice_hw: tuple[int, int]) -> dict[int, np.ndarray]:
    """``{slice index: [x0, y0, x1, y1]}`` for every slice ``box`` spans (slice frame, original pixels)."""
    first, last = slice_range(box, axis)
    rect = box_in_slice_frame(box, axis, flips, slice_hw)
    return {k: rect.copy() for k in range(first, last + 1)}


def points_in_slice_frame(index_xyz: np.ndarray, axis: str, flips: tuple[bool, bool], slice_hw: tuple[int, int],
                          what: str = "points") -> tuple[int, np.ndarray]:
    """``Px3`` int voxel indices all on one slice -> (slice index, ``Px2`` XY in its slice frame)."""
    slicing, rows, cols = _in_plane(axis)
    zyx = np.asarray(index_xyz, dtype=np.int64).reshape(-1, 3)[:, ::-1]
    on = np.unique(zyx[:, slicing])
    if on.size != 1:
        raise PromptError(f"{what}: clicks of one prompt must lie on one {axis} slice, found slices "
                          f"{on.tolist()}; split them into one prompt per slice")
    r, c = zyx[:, rows].astype(np.float64), zyx[:, cols].astype(np.float64)
    h, w = slice_hw
    if flips[0]:
        r = h - 1 - r
    if flips[1]:
        c = w - 1 - c
    return int(on[0]), np.stack([c, r], axis=1)
