"""Slicing and orientation: which array axis a slice cuts, and the flips that show it as a radiologist does.

Volumes are ``(Z, Y, X)`` arrays; ``axial`` slices index array axis 0 (rows = Y, columns = X), ``coronal``
axis 1 (rows = Z, columns = X), ``sagittal`` axis 2 (rows = Z, columns = Y). The axes are not permuted; each
slice is only flipped (rows and/or columns) so that it reads as a radiologist displays it. From the direction
cosines, each in-plane array axis is matched to the patient axis it runs closest to and flipped unless it then
runs towards patient Left (x), Posterior (y) or Inferior (z) in DICOM LPS terms: axial slices show anterior up
and patient right on the image left, coronal slices superior up and patient right on the left, sagittal slices
superior up and anterior on the left. :mod:`samadapt.data.prepare` stores the flips as ``meta["flip_hw"]``;
:func:`orient_slice` applies them and is its own inverse; :func:`put_slice` writes a (display-oriented) slice
back into a ``(Z, Y, X)`` array, e.g. a prediction after :func:`samadapt.data.frame.from_model_frame_labels`.
For volumes acquired obliquely or with permuted axes the axis names describe array axes, not anatomy.

Also the limits on what is sliced (``MAX_SLICES`` along the slicing axis, ``MAX_SIDE`` pixels per in-plane
side), shared by ``samadapt prepare`` and the volumes :mod:`samadapt.inference` segments.
"""

from __future__ import annotations

import numpy as np

from samadapt.io.volume import Geometry

MAX_SIDE = 4096
MAX_SLICES = 5000
AXES = {"axial": 0, "coronal": 1, "sagittal": 2}
_INDEX_AXIS_OF_ARRAY_AXIS = {0: 2, 1: 1, 2: 0}  # (Z, Y, X) array axis -> SimpleITK (x, y, z) index axis
_DISPLAY_SIGN = (1.0, 1.0, -1.0)  # increasing row/column runs towards L (x), P (y), I (z) in LPS


def slice_flips(geometry: Geometry, axis: str) -> tuple[bool, bool]:
    """``(flip_rows, flip_cols)`` that put a slice along ``axis`` into radiological display orientation.

    See the module docstring for the rule; ``geometry.direction`` is SimpleITK's row-major 3x3 matrix whose
    column ``j`` is the physical direction of index axis ``j``.
    """
    slicing = AXES[axis]
    direction = np.asarray(geometry.direction, dtype=float).reshape(3, 3)
    flips = []
    for array_axis in (a for a in range(3) if a != slicing):
        vector = direction[:, _INDEX_AXIS_OF_ARRAY_AXIS[array_axis]]
        patient_axis = int(np.argmax(np.abs(vector)))
        flips.append(bool(np.sign(vector[patient_axis]) != _DISPLAY_SIGN[patient_axis]))
    return flips[0], flips[1]


def orient_slice(slice2d: np.ndarray, flips: tuple[bool, bool]) -> np.ndarray:
    """Flip the rows / columns (axes 0 / 1) of ``slice2d``; applying it twice gives the input back."""
    if flips[0]:
        slice2d = slice2d[::-1]
    if flips[1]:
        slice2d = slice2d[:, ::-1]
    return slice2d


def take_slice(array: np.ndarray, axis: str, index: int,
               flips: tuple[bool, bool] = (False, False)) -> np.ndarray:
    """Slice ``index`` of a ``(Z, Y, X)`` array along ``axis``, oriented with ``flips``: ``(rows, cols)``."""
    return orient_slice(np.take(array, index, axis=AXES[axis]), flips)


def put_slice(array: np.ndarray, axis: str, index: int, slice2d: np.ndarray,
              flips: tuple[bool, bool] = (False, False)) -> None:
    """Write an oriented ``slice2d`` (as :func:`take_slice` returned it) back into ``array`` in place."""
    target = tuple(s for a, s in enumerate(array.shape) if a != AXES[axis])
    if tuple(slice2d.shape) != target:
        raise ValueError(f"slice of shape {slice2d.shape} does not fit a {axis} slice {target} of {array.shape}")
    view = [slice(None)] * 3
    view[AXES[axis]] = index
    array[tuple(view)] = orient_slice(np.asarray(slice2d), flips)


def slice_spacings(geometry: Geometry, axis: str) -> tuple[tuple[float, float], float]:
    """In-plane ``(row, col)`` spacing and slice spacing (mm) for slices along ``axis``."""
    by_array_axis = {0: geometry.spacing[2], 1: geometry.spacing[1], 2: geometry.spacing[0]}
    slicing = AXES[axis]
    rows, cols = (a for a in range(3) if a != slicing)
    return (float(by_array_axis[rows]), float(by_array_axis[cols])), float(by_array_axis[slicing])
