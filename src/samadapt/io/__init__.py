"""Reading and writing medical volumes, 2D images and dataset layouts, keeping geometry.

The volume API is importable from here: ``from samadapt.io import read_volume, write_volume, Volume, Geometry``
(defined in :mod:`samadapt.io.volume`; loaded on first use, so importing a sibling module such as
:mod:`samadapt.io.atomic` does not load SimpleITK).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"read_volume": "samadapt.io.volume", "write_volume": "samadapt.io.volume",
            "Volume": "samadapt.io.volume", "Geometry": "samadapt.io.volume"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
