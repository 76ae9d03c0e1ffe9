"""Intensity windowing: raw scanner values -> ``uint8`` display intensities for SAM.

CT is windowed in Hounsfield units with a (width, level) pair, as radiologists read it; MR (and any
modality without an absolute scale) is stretched between low and high percentiles of its foreground
(non-zero) voxels, computed over the whole volume so every slice of a case shares one mapping.

Both mappings are a clipped linear ramp, exactly MONAI's ``ScaleIntensityRange(a_min, a_max, 0, 255,
clip=True)`` (and ``ScaleIntensityRangePercentiles`` with a foreground mask) followed by rounding to
``uint8``. They are written in numpy here because MONAI's transforms return float32 torch ``MetaTensor``s
(a second full-size copy of the volume) and importing ``monai.transforms`` costs seconds per process.

Arrays keep their shape: any ``(Z, Y, X)`` volume or ``(H, W)`` slice in, the same shape out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from samadapt.errors import ConfigError

#: CT windows as ``(width, level)`` in HU (Radiopaedia's "windowing (CT)" values).
CT_PRESETS: dict[str, tuple[float, float]] = {
    "abdomen": (400.0, 40.0),
    "liver": (150.0, 30.0),
    "lung": (1500.0, -600.0),
    "bone": (1800.0, 400.0),
    "soft_tissue": (350.0, 50.0),
    "mediastinum": (350.0, 50.0),
    "brain": (80.0, 40.0),
}

DEFAULT_PERCENTILES = (0.5, 99.5)


def _ramp_to_uint8(x: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map ``[low, high]`` linearly onto ``[0, 255]``, clip outside, round to ``uint8``."""
    x = np.asarray(x, dtype=np.float32)
    if not high > low:
        return np.where(x > low, 255, 0).astype(np.uint8)
    scaled = (x - np.float32(low)) * np.float32(255.0 / (high - low))
    np.clip(scaled, 0.0, 255.0, out=scaled)
    return np.rint(scaled).astype(np.uint8)


def window_ct(hu: np.ndarray, width: float, level: float) -> np.ndarray:
    """CT window: HU ``[level - width/2, level + width/2]`` -> ``[0, 255]`` ``uint8``, clipped outside.

    Args:
        hu: any shape, Hounsfield units (integer or float).
        width, level: the window in HU; ``width > 0``.
    """
    if width <= 0:
        raise ConfigError(f"CT window width must be positive, got {width}")
    return _ramp_to_uint8(hu, level - width / 2.0, level + width / 2.0)


def foreground_percentiles(x: np.ndarray, lower: float = 0.5, upper: float = 99.5) -> tuple[float, float]:
    """The ``lower`` and ``upper`` percentiles of the non-zero voxels of ``x`` (``(0, 0)`` if all zero)."""
    if not 0.0 <= lower < upper <= 100.0:
        raise ConfigError(f"percentiles must satisfy 0 <= lower < upper <= 100, got ({lower}, {upper})")
    values = np.asarray(x)
    values = values[values != 0]
    if values.size == 0:
        return 0.0, 0.0
    low, high = np.percentile(values.astype(np.float32), [lower, upper])
    return float(low), float(high)


def normalize_percentiles(x: np.ndarray, lower: float = 0.5, upper: float = 99.5) -> np.ndarray:
    """Stretch the ``[lower, upper]`` percentiles of the non-zero voxels of ``x`` onto ``[0, 255]``.

    Percentiles are taken over the whole array passed in (pass the full ``(Z, Y, X)`` volume, not a
    slice). Zero voxels (background in skull-stripped / masked MR) take part in the mapping but not in
    the statistics. Returns ``uint8`` of the same shape; an all-zero input gives all zeros.
    """
    low, high = foreground_percentiles(x, lower, upper)
    return _ramp_to_uint8(x, low, high)


@dataclass(frozen=True)
class Window:
    """A parsed ``--window`` setting.

    ``kind`` is ``"ct"`` (``width``/``level`` in HU), ``"percentiles"`` (``lower``/``upper`` percent of
    foreground voxels), ``"none"`` (input is already ``uint8`` display intensities; passed through) or
    ``"auto"`` (not yet resolved; see :meth:`resolve`).
    """

    kind: str
    width: float | None = None
    level: float | None = None
    lower: float = DEFAULT_PERCENTILES[0]
    upper: float = DEFAULT_PERCENTILES[1]

    def resolve(self, modality: str | None) -> Window:
        """Turn ``auto`` into a concrete window: CT -> abdomen preset, anything else -> percentiles."""
        if self.kind != "auto":
            return self
        if modality is not None and modality.strip().upper() == "CT":
            width, level = CT_PRESETS["abdomen"]
            return Window("ct", width, level, self.lower, self.upper)
        return Window("percentiles", lower=self.lower, upper=self.upper)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Window ``x`` (any shape) to ``uint8``; ``auto`` must be resolved first."""
        if self.kind == "ct":
            return window_ct(x, self.width, self.level)
        if self.kind == "percentiles":
            return normalize_percentiles(x, self.lower, self.upper)
        if self.kind == "none":
            if np.asarray(x).dtype != np.uint8:
                raise ConfigError(f"window 'none' needs uint8 input, got {np.asarray(x).dtype}; "
                                  "choose a CT preset, 'W,L' or 'percentiles'")
            return np.asarray(x)
        raise ConfigError("window 'auto' must be resolved with the modality before use")

    def to_dict(self) -> dict:
        """Plain description for manifests: only the fields that matter for ``kind``."""
        if self.kind == "ct":
            return {"kind": "ct", "width": self.width, "level": self.level}
        if self.kind == "percentiles":
            return {"kind": "percentiles", "lower": self.lower, "upper": self.upper}
        return {"kind": self.kind}


def parse_window(spec: str, modality: str | None = None,
                 percentiles: tuple[float, float] = DEFAULT_PERCENTILES) -> Window:
    """Parse a ``--window`` value.

    Accepts a preset name from :data:`CT_PRESETS`, ``"W,L"`` in HU (e.g. ``"400,40"``), ``"percentiles"``,
    ``"none"`` or ``"auto"``. ``auto`` is resolved when ``modality`` is given (``"CT"`` -> abdomen, any
    other -> percentiles), otherwise returned unresolved. Raises :class:`ConfigError` for anything else.
    """
    text = str(spec).strip().lower()
    lower, upper = (float(p) for p in percentiles)
    foreground_percentiles(np.zeros(1), lower, upper)  # validates the pair
    if text in CT_PRESETS:
        width, level = CT_PRESETS[text]
        return Window("ct", width, level, lower, upper)
    if text in ("auto", "percentiles", "none"):
        window = Window(text, lower=lower, upper=upper)
        return window.resolve(modality) if modality is not None else window
    parts = text.split(",")
    if len(parts) == 2:
        try:
            width, level = float(parts[0]), float(parts[1])
        except ValueError:
            width = level = None
        if width is not None and np.isfinite(width) and np.isfinite(level) and width > 0:
            return Window("ct", width, level, lower, upper)
    raise ConfigError(f"window '{spec}': use a preset ({', '.join(CT_PRESETS)}), 'W,L' in HU with W > 0 "
                      "(e.g. 400,40), 'percentiles', 'none' or 'auto'")
