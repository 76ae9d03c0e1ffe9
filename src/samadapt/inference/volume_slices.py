"""A volume as the Segmenter sees it: windowed to ``uint8`` and cut into display-oriented 2D slices.

Windowing and orientation are ``samadapt prepare``'s, so a model sees slices exactly as it was trained on
them: CT in a (width, level) window, other modalities stretched between foreground percentiles of the
whole volume (:mod:`samadapt.data.windowing`); slices along ``axis`` flipped into radiological display
orientation (:func:`samadapt.data.orientation.slice_flips`). The *slice frame* of slice ``k`` is that
display-oriented ``h x w`` image; masks predicted in it are written back into ``(Z, Y, X)`` label arrays
with :meth:`VolumeSlices.paint`, which undoes the flips.

``window="auto"`` needs the modality, which a bare volume file does not carry: pass ``modality``, or let
:func:`guess_modality` decide (CT when the volume reaches down to air, <= -500, as Hounsfield units do).
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from samadapt.data.orientation import AXES, MAX_SIDE, MAX_SLICES, put_slice, slice_flips, take_slice
from samadapt.data.windowing import Window, parse_window
from samadapt.errors import ConfigError, InputFileError
from samadapt.io.volume import Geometry, Volume, read_volume

CT_AIR_THRESHOLD = -500.0
_TOKENS = itertools.count()


def guess_modality(array: np.ndarray) -> str:
    """``"CT"`` when the smallest voxel value is at most -500 (air in HU), else ``"MR"`` (percentile windowing)."""
    return "CT" if array.size and float(np.min(array)) <= CT_AIR_THRESHOLD else "MR"


def check_volume_size(path: Path | None, shape_zyx: tuple[int, ...], axis: str) -> None:
    """Refuse volumes with more than ``MAX_SLICES`` slices or a side over ``MAX_SIDE`` (prepare's limits)."""
    slicing = AXES[axis]
    in_plane = [s for a, s in enumerate(shape_zyx) if a != slicing]
    if shape_zyx[slicing] > MAX_SLICES or max(in_plane) > MAX_SIDE:
        raise InputFileError(f"{path or 'volume'}: {tuple(shape_zyx)} (Z, Y, X) voxels exceed {MAX_SLICES} slices "
                             f"or {MAX_SIDE} pixels per side; crop or resample it first")


@dataclass
class VolumeSlices:
    """A windowed ``(Z, Y, X)`` ``uint8`` volume, its geometry and the orientation of its slices.

    ``key`` names the volume, window and axis, so that caches never mix slices of two of them.
    """

    intensities: np.ndarray
    geometry: Geometry
    axis: str
    flips: tuple[bool, bool]
    window: Window
    path: Path | None = None
    key: str = field(default="")

    @classmethod
    def from_volume(cls, volume: Volume | str | os.PathLike[str], window: str | Window = "auto",
                    axis: str = "axial", modality: str | None = None) -> VolumeSlices:
        """Read (if a path), window and orient a volume; ``window``: preset, ``"W,L"``, percentiles, none or auto."""
        if axis not in AXES:
            raise ConfigError(f"axis '{axis}': use one of {', '.join(AXES)}")
        if not isinstance(volume, Volume):
            volume = read_volume(volume)
        array = volume.array
        check_volume_size(volume.path, array.shape, axis)
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            raise InputFileError(f"{volume.path or 'volume'}: contains NaN or infinite voxels; fix or mask them first")
        parsed = window if isinstance(window, Window) else parse_window(window)
        resolved = parsed.resolve(modality or guess_modality(array))
        token = next(_TOKENS)
        key = f"volume{token}:{axis}:{json.dumps(resolved.to_dict(), sort_keys=True)}"
        return cls(resolved.apply(array), volume.geometry, axis, slice_flips(volume.geometry, axis), resolved,
                   volume.path, key)

    @property
    def n_slices(self) -> int:
        """Number of slices along ``axis``."""
        return int(self.intensities.shape[AXES[self.axis]])

    @property
    def slice_hw(self) -> tuple[int, int]:
        """``(h, w)`` of every slice (the slice frame)."""
        shape = [s for a, s in enumerate(self.intensities.shape) if a != AXES[self.axis]]
        return int(shape[0]), int(shape[1])

    def check_index(self, index: int) -> int:
        """``index`` if it is a slice of this volume, else :class:`ConfigError`."""
        if isinstance(index, bool) or not 0 <= int(index) < self.n_slices:
            raise ConfigError(f"slice {index} is outside the volume ({self.n_slices} {self.axis} slices, "
                              f"0..{self.n_slices - 1})")
        return int(index)

    def slice(self, index: int) -> np.ndarray:
        """Slice ``index`` as a contiguous ``h x w`` ``uint8`` image in the slice frame."""
        return np.ascontiguousarray(take_slice(self.intensities, self.axis, self.check_index(index), self.flips))

    def voxel_index(self, index: int, row: int, col: int) -> tuple[int, int, int]:
        """``(z, y, x)`` array index of pixel ``(row, col)`` of slice ``index`` in the slice frame (undoes the
        flips: ``take_slice(array, ...)[row, col] == array[voxel_index(...)]``); :class:`ConfigError` off the slice."""
        index = self.check_index(index)
        height, width = self.slice_hw
        if isinstance(row, bool) or isinstance(col, bool) or not (0 <= row < height and 0 <= col < width):
            raise ConfigError(f"pixel (x={col}, y={row}) is outside the {width}x{height} slice")
        slicing = AXES[self.axis]
        rows_axis, cols_axis = (a for a in range(3) if a != slicing)
        found = [0, 0, 0]
        found[slicing] = index
        found[rows_axis] = height - 1 - row if self.flips[0] else row
        found[cols_axis] = width - 1 - col if self.flips[1] else col
        return found[0], found[1], found[2]

    def empty_labels(self, max_value: int = 255) -> np.ndarray:
        """A zero ``(Z, Y, X)`` label array: ``uint8`` for values up to 255, else ``uint16``."""
        dtype = np.uint8 if max_value <= 255 else np.uint16
        return np.zeros(self.intensities.shape, dtype=dtype)

    def labels_slice(self, labels: np.ndarray, index: int) -> np.ndarray:
        """Slice ``index`` of a ``(Z, Y, X)`` label array, in the slice frame (a copy)."""
        return np.array(take_slice(labels, self.axis, self.check_index(index), self.flips))

    def put_labels_slice(self, labels: np.ndarray, index: int, values: np.ndarray) -> None:
        """Write an ``h x w`` slice-frame label image back into ``labels`` ``(Z, Y, X)`` in place."""
        put_slice(labels, self.axis, self.check_index(index), values, self.flips)

    def paint(self, labels: np.ndarray, index: int, mask: np.ndarray, value: int) -> None:
        """Set ``labels`` to ``value`` where the slice-frame ``h x w`` boolean ``mask`` of slice ``index`` is true."""
        current = self.labels_slice(labels, index)
        current[np.asarray(mask, dtype=bool)] = value
        self.put_labels_slice(labels, index, current)
