"""Geometry of a batch of masks that the prompt simulators share: distance transforms, components, neighbours.

Masks are ``NxHxW`` bool tensors in one pixel frame (model-input pixels for prepared data); each of the N
masks is treated on its own. Distances are Euclidean, in pixels, from
:func:`scipy.ndimage.distance_transform_edt`, mask by mask (one 3D call with a large spacing across masks is
three times slower). The image border counts as background (a mask touching the border has its distance 1
there, as RITM pads its masks before the transform), so an "interior" point never sits on the border.
Points come back as ``Nx2`` float XY at pixel centres (``x + 0.5``), as :mod:`samadapt.prompts.points`.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

# 2D connectivity inside each mask of an NxHxW stack, never across masks: 8-neighbourhood in the middle plane
_IN_PLANE = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE[1] = True


def _as_numpy(masks: torch.Tensor) -> np.ndarray:
    return masks.detach().to("cpu", torch.bool).numpy()


def distance_inside(masks: torch.Tensor) -> torch.Tensor:
    """``NxHxW`` float: each foreground pixel's distance to the nearest background pixel (or the image
    border, one pixel beyond the last row/column); 0 on the background.

    Computed on each mask's bounding box padded by one pixel, which is exact (that ring is background and
    lies nearer than any background beyond it) and much cheaper for small objects.
    """
    stack = _as_numpy(masks)
    out = np.zeros(stack.shape, dtype=np.float32)
    for index, mask in enumerate(stack):
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if rows.size == 0:
            continue
        y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        window = np.pad(mask[y0:y1, x0:x1], 1)
        out[index, y0:y1, x0:x1] = ndimage.distance_transform_edt(window)[1:-1, 1:-1]
    return torch.from_numpy(out)


def distance_outside(masks: torch.Tensor) -> torch.Tensor:
    """``NxHxW`` float: each pixel's distance to the nearest pixel of its mask (0 inside; ``inf`` for an
    empty mask)."""
    stack = _as_numpy(masks)
    out = np.full(stack.shape, np.inf, dtype=np.float32)
    for index, mask in enumerate(stack):
        if mask.any():
            out[index] = ndimage.distance_transform_edt(~mask)
    return torch.from_numpy(out)


def largest_component(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The largest 8-connected component of each mask: (``NxHxW`` bool, its area ``N`` long; 0 if empty).

    Ties go to the component met first in row-major order.
    """
    stack = _as_numpy(masks)
    n = stack.shape[0]
    labels, count = ndimage.label(stack, structure=_IN_PLANE)
    if count == 0:
        return torch.zeros(masks.shape, dtype=torch.bool), torch.zeros(n, dtype=torch.long)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    # components are numbered in scan order, so mask i owns the labels up to its own highest one
    highest = np.maximum.accumulate(labels.reshape(n, -1).max(axis=1))
    components = np.arange(1, count + 1)
    owner = np.searchsorted(highest, components)  # which mask each component belongs to
    # per mask, the largest component; the first of equals wins
    order = np.lexsort((components, -sizes, owner))
    first = order[np.r_[True, owner[order][1:] != owner[order][:-1]]]
    best = np.zeros(n, dtype=np.int64)
    area = np.zeros(n, dtype=np.int64)
    best[owner[first]], area[owner[first]] = components[first], sizes[first]
    chosen = (labels == best[:, None, None]) & (best[:, None, None] > 0)
    return torch.from_numpy(chosen), torch.from_numpy(area)


def interior_points(masks: torch.Tensor) -> torch.Tensor:
    """The interior maximum of each mask's distance transform (:func:`distance_inside`): ``Nx2`` float XY.

    The point farthest from the mask's boundary, the click RITM's and SimpleClick's simulated users make;
    ties go to the first pixel in row-major order. Empty masks give the image centre.
    """
    n, h, w = masks.shape
    distance = distance_inside(masks).reshape(n, -1)
    flat = distance.argmax(dim=1)
    empty = distance.max(dim=1).values <= 0
    flat = torch.where(empty, torch.full_like(flat, (h // 2) * w + w // 2), flat)
    return torch.stack([(flat % w).float() + 0.5, (flat // w).float() + 0.5], dim=1)


def value_at(masks: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """``masks[n, y, x]`` at each of the ``Nx2`` XY points (pixel-centre coordinates): ``N`` bool."""
    h, w = masks.shape[-2:]
    x = points[:, 0].long().clamp(0, w - 1)
    y = points[:, 1].long().clamp(0, h - 1)
    return masks[torch.arange(masks.shape[0], device=masks.device), y, x]


def nearest_neighbours(
    masks: torch.Tensor, slice_masks: torch.Tensor, gap: torch.Tensor | None = None
) -> torch.Tensor:
    """For each of ``masks`` (``NxHxW``), its nearest *neighbour* among ``slice_masks`` (``MxHxW``, every object
    of the slice): ``NxHxW`` bool, empty where it has none.

    A neighbour is another object that does not overlap the region at all: the region itself, objects nested
    in it (its lesions) and objects it is nested in (its organ) are excluded, being part of the same
    structure. Nearest: the smallest distance from the region to any pixel of the object. ``gap``: the
    regions' :func:`distance_outside`, when the caller has it already.
    """
    n = masks.shape[0]
    if n == 0 or slice_masks.shape[0] == 0:
        return torch.zeros_like(masks, dtype=torch.bool)
    masks, slice_masks = masks.bool().cpu(), slice_masks.bool().cpu()
    overlap = (masks[:, None] & slice_masks[None]).flatten(2).any(dim=2)  # NxM
    present = slice_masks.flatten(1).any(dim=1)
    gap = distance_outside(masks) if gap is None else gap  # NxHxW distance to each region
    inf = torch.tensor(float("inf"))
    closest = torch.where(slice_masks[None], gap[:, None], inf).flatten(2).min(dim=2).values  # NxM
    closest = torch.where(overlap | ~present[None], inf, closest)
    nearest = closest.argmin(dim=1)
    has = torch.isfinite(closest.min(dim=1).values)
    return slice_masks[nearest] & has[:, None, None]
