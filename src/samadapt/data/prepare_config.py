"""Settings of ``samadapt prepare`` (:class:`PrepareConfig`), kept with the data package that uses them so
that ``data`` needs no import of :mod:`samadapt.config` (which sits above ``training``); the commands import
it from :mod:`samadapt.config` like every other command's settings."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from samadapt.errors import ConfigError


@dataclasses.dataclass
class PrepareConfig:
    """Settings of ``samadapt prepare`` (raw dataset -> prepared model-frame slices).

    - ``image_size``: side ``S`` of the square model frame (longest side resized to it, then padded).
    - ``axis``: slicing axis of ``(Z, Y, X)`` volumes: ``axial`` (Z), ``coronal`` (Y) or ``sagittal`` (X).
    - ``window``: CT preset name, ``"W,L"`` in HU, ``percentiles``, ``none`` or ``auto`` (CT -> abdomen,
      other modalities -> percentiles; 8-bit 2D images pass through).
    - ``min_area``: objects smaller than this many model-frame pixels are dropped.
    - ``keep_empty_ratio``: fraction of slices without objects that are kept (chosen from ``seed``).
    - ``split``: train/val/test fractions of cases; ``seed`` drives the split and empty-slice choice.
    - ``split_group``: a regular expression whose first group (or whole match) names the subject of a case
      id, e.g. ``'^(patient\\d+)'``: all cases of a subject share one split, and the fractions count
      subjects. Without it, case names that look like ``<subject>_<number>`` cut by the split give a warning.
    - ``split_file``: a JSON file ``{"train": [...], "val": [...], "test": [...]}`` of case ids (of subjects
      with ``split_group``), or nnU-Net's ``splits_final.json`` (fold 0); it replaces ``split``.
    - ``classes``: class names to keep (``None``: all); other label values become background.
    - ``percentiles``: lower/upper foreground percentiles for percentile normalisation.
    """

    image_size: int = 256
    axis: str = "axial"
    window: str = "auto"
    min_area: int = 16
    keep_empty_ratio: float = 0.1
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    split_group: str | None = None
    split_file: str | None = None
    seed: int = 0
    classes: list[str] | None = None
    percentiles: tuple[float, float] = (0.5, 99.5)

    def __post_init__(self) -> None:
        def bad(what: str) -> ConfigError:
            return ConfigError(f"prepare setting {what}")

        size = self.image_size
        if isinstance(size, bool) or not isinstance(size, int) or not 16 <= size <= 4096:
            raise bad(f"image_size={self.image_size!r}: use an integer between 16 and 4096 (SAM uses 1024)")
        if self.axis not in ("axial", "coronal", "sagittal"):
            raise bad(f"axis={self.axis!r}: use axial, coronal or sagittal")
        self.window = str(self.window)
        if isinstance(self.min_area, bool) or not isinstance(self.min_area, int) or self.min_area < 1:
            raise bad(f"min_area={self.min_area!r}: use an integer >= 1 (model-frame pixels)")
        if not isinstance(self.keep_empty_ratio, (int, float)) or not 0.0 <= self.keep_empty_ratio <= 1.0:
            raise bad(f"keep_empty_ratio={self.keep_empty_ratio!r}: use a fraction between 0 and 1")
        try:
            split = tuple(float(f) for f in self.split)
        except (TypeError, ValueError):
            split = ()
        if len(split) != 3 or min(split) < 0 or split[0] <= 0 or abs(sum(split) - 1.0) > 1e-6:
            raise bad(f"split={self.split!r}: give three fractions train,val,test summing to 1 (train > 0)")
        self.split = split
        for key in ("split_group", "split_file"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, str) or not value):
                raise bad(f"{key}={value!r}: give a non-empty string")
        if self.split_file is not None:
            self.split_file = str(Path(self.split_file).expanduser().resolve())
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise bad(f"seed={self.seed!r}: use a non-negative integer")
        if self.classes is not None:
            if isinstance(self.classes, str):
                self.classes = [c.strip() for c in self.classes.split(",") if c.strip()]
            if not self.classes or not all(isinstance(c, str) for c in self.classes):
                raise bad(f"classes={self.classes!r}: give a list of class names, e.g. [liver,spleen]")
            self.classes = list(self.classes)
        try:
            percentiles = tuple(float(p) for p in self.percentiles)
        except (TypeError, ValueError):
            percentiles = ()
        if len(percentiles) != 2 or not 0.0 <= percentiles[0] < percentiles[1] <= 100.0:
            raise bad(f"percentiles={self.percentiles!r}: give lower,upper with 0 <= lower < upper <= 100")
        self.percentiles = percentiles
