"""Segment a volume from 3D prompts (or automatically) into one label volume on the source grid.

Prompts (:class:`VolumePrompt`, voxel indices ``(x, y, z)``; :mod:`samadapt.inference.volume_prompts` maps
world coordinates to them):

- a **3D box** without ``propagate``: every slice the box spans is prompted with the box's in-plane
  rectangle. All boxes of one slice are decoded together, as one batch on its embedding.
- a **3D box with** ``propagate``: the box's middle slice is the key slice, prompted with the rectangle,
  and the object is followed through the slices (:mod:`samadapt.inference.propagation`), never beyond the
  box's slice range (a box one slice thick propagates through the whole volume).
- **clicks** (all on one slice): that slice only, or with ``propagate`` the key slice of a propagation.

Automatic mode (:func:`segment_volume_auto`) asks the Segmenter's ProMISe adapter for every class on every
slice and keeps the masks whose predicted IoU reaches ``min_score`` and whose area reaches ``min_area``.

Assembly: masks are painted into a zero ``(Z, Y, X)`` label array in prompt order (automatic mode: class
order), each with its class value; where objects overlap the later one wins, so list a lesion after the
organ that contains it. The array has the source volume's grid, so writing it with the source geometry
(:func:`samadapt.io.volume.write_volume`) puts every label on its voxel.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from samadapt.errors import ConfigError, PromptError
from samadapt.inference.propagation import PropagationSettings, propagate
from samadapt.inference.segmenter import Segmenter
from samadapt.inference.volume_prompts import VoxelBox, box_in_slice_frame, points_in_slice_frame, slice_range

OnSlice = Callable[[int], None]
"""``on_slice(n)``: called with the number of slices just decoded, as they are decoded (propagation decides as it
goes how many there will be, so there is no total to give as :data:`samadapt.progress.Progress` does)."""


@dataclass(frozen=True)
class VolumePrompt:
    """One object to segment: a class (name, label value) and a 3D box or clicks, in voxel indices (x, y, z).

    ``points``: ``Px3`` int voxel indices on one slice; ``labels``: ``P`` (1 positive, 0 negative).
    """

    class_name: str
    value: int
    box: VoxelBox | None = None
    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    propagate: bool = False

    def __post_init__(self) -> None:
        if (self.box is None) == (self.points is None):
            raise PromptError(f"prompt for '{self.class_name}': give either a box or points, not both or neither")
        if self.points is not None and (self.labels is None or len(self.labels) != len(self.points)):
            raise PromptError(f"prompt for '{self.class_name}': give one label (1 or 0) per point")
        if not 1 <= int(self.value) <= 65535:
            raise PromptError(f"class '{self.class_name}': label value {self.value} must lie in 1..65535")


@dataclass
class VolumeSegmentation:
    """The label array ``(Z, Y, X)`` and what it took: ``slices_decoded`` (slice decodes, all prompts),
    ``seconds`` (wall time), ``objects``: per prompt ``{"class", "value", "slices", "stops"}``."""

    labels: np.ndarray
    slices_decoded: int = 0
    seconds: float = 0.0
    objects: list[dict] = field(default_factory=list)

    @property
    def seconds_per_slice(self) -> float:
        return self.seconds / self.slices_decoded if self.slices_decoded else 0.0


def _embed_in_order(segmenter: Segmenter, order: list[int], position: int) -> None:
    """Embed the next ``encode_batch_size`` slices of ``order`` from ``position`` when the current one is missing."""
    if not segmenter.is_embedded(order[position]):
        segmenter.embed(order[position : position + segmenter.encode_batch_size])


def _per_slice_prompts(segmenter: Segmenter,
                       prompts: list[VolumePrompt]) -> dict[int, list[tuple[int, str, np.ndarray]]]:
    """``{slice: [(prompt index, "box" | "points", data)]}`` for the prompts that do not propagate."""
    volume = segmenter.volume
    by_slice: dict[int, list[tuple[int, str, np.ndarray]]] = {}
    for i, prompt in enumerate(prompts):
        if prompt.propagate:
            continue
        if prompt.box is not None:
            first, last = slice_range(prompt.box, volume.axis)
            rect = box_in_slice_frame(prompt.box, volume.axis, volume.flips, volume.slice_hw)
            for k in range(first, last + 1):
                by_slice.setdefault(k, []).append((i, "box", rect))
        else:
            k, xy = points_in_slice_frame(prompt.points, volume.axis, volume.flips, volume.slice_hw,
                                          f"prompt {i} ({prompt.class_name})")
            by_slice.setdefault(k, []).append((i, "points", xy))
    return by_slice


def segment_volume(segmenter: Segmenter, prompts: list[VolumePrompt],
                   settings: PropagationSettings = PropagationSettings(),
                   on_slice: OnSlice | None = None) -> VolumeSegmentation:
    """Segment the volume set on ``segmenter`` (:meth:`Segmenter.set_volume`) from ``prompts``."""
    volume = segmenter.volume
    if volume is None:
        raise ConfigError("segment_volume needs a volume: call Segmenter.set_volume first")
    if not prompts:
        raise PromptError("no prompts for this volume; give at least one box or click")
    t0 = time.perf_counter()
    masks: list[dict[int, np.ndarray]] = [{} for _ in prompts]
    stops: list[dict] = [{} for _ in prompts]
    decoded = 0
    by_slice = _per_slice_prompts(segmenter, prompts)
    order = sorted(by_slice)
    for position, k in enumerate(order):
        _embed_in_order(segmenter, order, position)
        entries = by_slice[k]
        boxes = [(i, data) for i, kind, data in entries if kind == "box"]
        if boxes:
            found = segmenter.predict(boxes=np.stack([b for _, b in boxes]), slice_index=k)
            for (i, _), mask in zip(boxes, found.masks[:, 0], strict=True):
                masks[i][k] = mask
        for i, kind, xy in entries:
            if kind == "points":
                found = segmenter.predict(points=xy[None], labels=np.asarray(prompts[i].labels)[None], slice_index=k)
                masks[i][k] = found.masks[0, 0]
        decoded += 1
        if on_slice is not None:
            on_slice(1)
    for i, prompt in enumerate(prompts):
        if not prompt.propagate:
            continue
        counted: list[int] = []

        def tick(k: int, counted: list[int] = counted) -> None:
            counted.append(k)
            if on_slice is not None:
                on_slice(1)

        if prompt.box is not None:
            first, last = slice_range(prompt.box, volume.axis)
            bounds = (first, last) if last > first else None
            rect = box_in_slice_frame(prompt.box, volume.axis, volume.flips, volume.slice_hw)
            result = propagate(segmenter, (first + last) // 2, box=rect, settings=settings, slice_range=bounds,
                               on_slice=tick)
        else:
            k, xy = points_in_slice_frame(prompt.points, volume.axis, volume.flips, volume.slice_hw,
                                          f"prompt {i} ({prompt.class_name})")
            result = propagate(segmenter, k, points=xy, labels=np.asarray(prompt.labels), settings=settings,
                               on_slice=tick)
        masks[i], stops[i] = result.masks, result.stops
        decoded += len(counted)
    labels = volume.empty_labels(max((p.value for p in prompts), default=1))
    objects = []
    for prompt, object_masks, object_stops in zip(prompts, masks, stops, strict=True):
        for k, mask in sorted(object_masks.items()):
            volume.paint(labels, k, mask, prompt.value)
        objects.append({"class": prompt.class_name, "value": int(prompt.value),
                        "slices": [int(k) for k, m in sorted(object_masks.items()) if m.any()], "stops": object_stops})
    return VolumeSegmentation(labels, decoded, time.perf_counter() - t0, objects)


@dataclass(frozen=True)
class AutoSettings:
    """Which automatic masks to keep: the adapter's presence probability >= ``presence_threshold`` (where it
    has a presence head), predicted IoU >= ``min_score`` and at least ``min_area`` pixels."""

    presence_threshold: float | None = 0.5
    min_score: float = 0.0
    min_area: int = 8

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not (name == "presence_threshold" and value is None) and (
                    isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ConfigError(f"auto setting {name}={value!r}: must be a number")


def segment_volume_auto(segmenter: Segmenter, classes: list[str] | None = None,
                        settings: AutoSettings = AutoSettings(),
                        on_slice: OnSlice | None = None) -> VolumeSegmentation:
    """Segment every slice automatically with the Segmenter's ProMISe adapter; class ``c`` gets value ``index + 1``.

    ``classes``: names among ``segmenter.classes`` to segment (default: all).
    """
    if not segmenter.has_auto:
        raise ConfigError("automatic segmentation needs a ProMISe adapter with an APM; pass --adapter RUN")
    volume = segmenter.volume
    if volume is None:
        raise ConfigError("segment_volume_auto needs a volume: call Segmenter.set_volume first")
    known = segmenter.classes
    wanted = known if classes is None else list(classes)
    unknown = [c for c in wanted if c not in known]
    if unknown:
        raise PromptError(f"classes {', '.join(unknown)} are not segmented by the adapter; known: {', '.join(known)}")
    t0 = time.perf_counter()
    labels = volume.empty_labels(len(known))
    found_on: dict[str, list[int]] = {c: [] for c in wanted}
    order = list(range(volume.n_slices))
    for position, k in enumerate(order):
        _embed_in_order(segmenter, order, position)
        for name in wanted:
            prediction = segmenter.predict_auto(name, slice_index=k, presence_threshold=settings.presence_threshold)
            mask = prediction.masks[0, 0]
            if prediction.scores[0, 0] >= settings.min_score and mask.sum() >= settings.min_area:
                volume.paint(labels, k, mask, known.index(name) + 1)
                found_on[name].append(k)
        if on_slice is not None:
            on_slice(1)
    objects = [{"class": c, "value": known.index(c) + 1, "slices": found_on[c], "stops": {}} for c in wanted]
    return VolumeSegmentation(labels, volume.n_slices, time.perf_counter() - t0, objects)
