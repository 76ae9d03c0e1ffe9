"""Key-slice propagation: segment one slice from a prompt, then follow the object slice by slice.

From a slice's mask, the next slice's box prompt is the mask's tight box widened on every side by
``max(margin_px, margin_fraction x side)`` (slice-frame pixels, clipped to the image); with
``previous_mask_prompt`` the previous slice's low-res logits go in as SAM's mask prompt too. Propagation
runs both ways from the key slice and stops in a direction at the first slice whose mask

- is smaller than ``min_area`` pixels (the object has ended, or the mask vanished);
- overlaps the previous slice's mask by less than ``min_overlap`` (2D IoU: the box slid onto another
  structure); or
- has a mean intensity more than ``max_intensity_shift`` key-slice standard deviations (at least
  ``min_intensity_spread`` grey levels) away from the key-slice mask's mean: the mask now covers other
  tissue (organs keep their density from slice to slice; ``None`` turns the rule off);

or at the volume's end, the optional ``slice_range`` or ``max_slices`` per direction. The slice that
stops a direction is not kept. Masks, boxes and predicted IoUs are in the slice frame of
:class:`~samadapt.inference.volume_slices.VolumeSlices`.

Why the defaults (no margin, intensity rule on): a SAM that tends to fill its box grows the box by the
margin on every slice, compounding into neighbouring tissue; and SAM rarely returns an empty mask when
the object has ended, so "the mask vanished" alone seldom stops it. On CT phantoms with ``tiny``
(``benchmarks/bench_serve.py`` reports the figures) margin 0 with the intensity rule gave the best 3D Dice;
a 5% + 1 px margin and no intensity rule both did clearly worse.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from samadapt.errors import ConfigError, PromptError
from samadapt.inference.segmenter import Segmenter
from samadapt.overlap import iou
from samadapt.prompts.boxes import boxes_from_masks


@dataclass(frozen=True)
class PropagationSettings:
    """How far and how carefully to follow an object; see the module docstring."""

    margin_fraction: float = 0.0
    margin_px: float = 0.0
    min_area: int = 8
    min_overlap: float = 0.05
    max_intensity_shift: float | None = 1.5
    min_intensity_spread: float = 5.0
    max_slices: int | None = None
    previous_mask_prompt: bool = False

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            optional = name in ("max_intensity_shift", "max_slices") and value is None
            if name != "previous_mask_prompt" and not optional and (
                    isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ConfigError(f"propagation setting {name}={value!r}: must be a number")
        if not isinstance(self.previous_mask_prompt, bool):
            raise ConfigError(f"propagation setting previous_mask_prompt={self.previous_mask_prompt!r}: "
                              "use true or false")
        if not 0 <= self.margin_fraction <= 1 or self.margin_px < 0:
            raise ConfigError("propagation margins: margin_fraction in [0, 1] and margin_px >= 0")
        if self.min_area < 1 or not 0 <= self.min_overlap <= 1:
            raise ConfigError("propagation stop rules: min_area >= 1 pixel and min_overlap in [0, 1]")
        if self.max_intensity_shift is not None and self.max_intensity_shift <= 0:
            raise ConfigError("propagation max_intensity_shift must be positive (standard deviations) or None")
        if self.max_slices is not None and self.max_slices < 0:
            raise ConfigError("propagation max_slices must be >= 0 (slices per direction)")


@dataclass
class PropagationResult:
    """``masks[k]``: ``hxw`` bool of slice ``k``; ``boxes[k]``: the XYXY box that prompted it (None on the key
    slice when it was prompted by clicks only); ``scores[k]``: the decoder's predicted IoU; ``stops``: why
    each direction ended (``{"up": ..., "down": ...}``, up = increasing slice index)."""

    key_slice: int
    masks: dict[int, np.ndarray] = field(default_factory=dict)
    boxes: dict[int, np.ndarray | None] = field(default_factory=dict)
    scores: dict[int, float] = field(default_factory=dict)
    stops: dict[str, str] = field(default_factory=dict)


def box_with_margin(mask: np.ndarray, margin_fraction: float = 0.0, margin_px: float = 0.0) -> np.ndarray:
    """Tight XYXY box of an ``hxw`` mask widened by ``max(margin_px, margin_fraction x side)``, clipped to the image."""
    h, w = mask.shape
    x0, y0, x1, y1 = boxes_from_masks(torch.from_numpy(np.ascontiguousarray(mask))[None])[0].tolist()
    mx = max(margin_px, margin_fraction * (x1 - x0 + 1))
    my = max(margin_px, margin_fraction * (y1 - y0 + 1))
    return np.array([max(0.0, x0 - mx), max(0.0, y0 - my), min(w - 1.0, x1 + mx), min(h - 1.0, y1 + my)])


class _Reference:
    """The key-slice mask's intensity statistics, for the intensity-consistency stop rule."""

    def __init__(self, image: np.ndarray, mask: np.ndarray, settings: PropagationSettings):
        values = image[mask].astype(np.float64)
        self.mean = float(values.mean())
        self.spread = max(float(values.std()), settings.min_intensity_spread)
        self.limit = settings.max_intensity_shift

    def departs(self, image: np.ndarray, mask: np.ndarray) -> bool:
        return self.limit is not None and abs(float(image[mask].mean()) - self.mean) / self.spread > self.limit


def propagate(
    segmenter: Segmenter,
    key_slice: int,
    box: np.ndarray | None = None,
    points: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    settings: PropagationSettings = PropagationSettings(),
    slice_range: tuple[int, int] | None = None,
    on_slice: Callable[[int], None] | None = None,
) -> PropagationResult:
    """Segment ``key_slice`` from a box and/or clicks, then propagate through the volume set on ``segmenter``.

    Args:
        box: ``[x0, y0, x1, y1]``; points ``Px2`` XY with ``labels`` ``P``: the key slice's prompt (slice frame).
        slice_range: inclusive ``(first, last)`` slices propagation may reach (default: the whole volume).
        on_slice: called with each slice index once it is decoded (for progress).
    """
    volume = segmenter.volume
    if volume is None:
        raise ConfigError("propagation needs a volume: call set_volume first")
    key = volume.check_index(key_slice)
    first, last = slice_range if slice_range is not None else (0, volume.n_slices - 1)
    if not first <= key <= last:
        raise PromptError(f"key slice {key} lies outside the propagation range {first}..{last}")
    if box is None and points is None:
        raise PromptError("propagation needs a key-slice prompt: a box and/or clicks")
    result = PropagationResult(key)
    start = segmenter.predict(boxes=None if box is None else np.asarray(box, dtype=np.float64)[None],
                              points=None if points is None else np.asarray(points)[None],
                              labels=None if labels is None else np.asarray(labels)[None], slice_index=key)
    if on_slice is not None:
        on_slice(key)
    mask = start.masks[0, 0]
    if mask.sum() < settings.min_area:
        result.stops = {"up": "empty key slice", "down": "empty key slice"}
        return result
    reference = _Reference(volume.slice(key), mask, settings)
    result.masks[key], result.scores[key] = mask, float(start.scores[0, 0])
    result.boxes[key] = None if box is None else np.asarray(box, dtype=np.float64)
    for name, step, end in (("up", 1, last), ("down", -1, first)):
        previous, previous_logits, k = mask, start.low_res_logits[:, :1], key + step
        result.stops[name] = "volume end" if end in (0, volume.n_slices - 1) else "slice range end"
        while (k <= end) if step > 0 else (k >= end):
            if settings.max_slices is not None and abs(k - key) > settings.max_slices:
                result.stops[name] = "max_slices"
                break
            if not segmenter.is_embedded(k):  # encode the next slices of this direction in one batch
                reach = k + step * (segmenter.encode_batch_size - 1)
                segmenter.embed(range(k, (min(end, reach) if step > 0 else max(end, reach)) + step, step))
            prompt = box_with_margin(previous, settings.margin_fraction, settings.margin_px)
            found = segmenter.predict(boxes=prompt[None], slice_index=k,
                                      mask_input=previous_logits if settings.previous_mask_prompt else None)
            if on_slice is not None:
                on_slice(k)
            current = found.masks[0, 0]
            if current.sum() < settings.min_area:
                result.stops[name] = "object ended"
                break
            # both masks hold >= min_area >= 1 pixels here, so IoU's both-empty rule (1) never stops or continues
            # a propagation: an empty mask has already stopped it ("object ended")
            if iou(current, previous) < settings.min_overlap:
                result.stops[name] = "lost overlap"
                break
            if reference.departs(volume.slice(k), current):
                result.stops[name] = "intensity changed"
                break
            result.masks[k], result.boxes[k], result.scores[k] = current, prompt, float(found.scores[0, 0])
            previous, previous_logits, k = current, found.low_res_logits[:, :1], k + step
    return result
