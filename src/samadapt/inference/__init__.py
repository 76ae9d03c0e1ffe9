"""Inference: embed once, decode many prompts.

- decoding is :class:`samadapt.models.decoder.Decoder` (torch :class:`~samadapt.models.decoder.SamDecoder`,
  or onnxruntime :class:`~samadapt.inference.onnx_decoding.OnnxDecoding`); automatic masks follow
  :mod:`samadapt.promise.automatic`.
- :mod:`~samadapt.inference.segmenter`: :class:`~samadapt.inference.segmenter.Segmenter` (``set_image`` /
  ``set_volume``, ``predict``, ``predict_auto``) over models of the registry, ``.pth`` files and run folders.
- :mod:`~samadapt.inference.volume_slices`, :mod:`~samadapt.inference.volume_prompts`,
  :mod:`~samadapt.inference.propagation`, :mod:`~samadapt.inference.volume_segmentation`: volumes windowed
  and oriented as ``samadapt prepare`` does, 3D prompts, key-slice propagation, label volumes.
- :mod:`~samadapt.inference.prompt_file`, :mod:`~samadapt.inference.segment_cases`: ``samadapt segment``.

See ``docs/inference.md``. ``from samadapt.inference import Segmenter`` works too (loaded on first use, so
importing a submodule does not build the whole inference stack).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"Segmenter": "samadapt.inference.segmenter"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
