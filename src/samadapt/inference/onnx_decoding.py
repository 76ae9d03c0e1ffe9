"""Prompt decoding in onnxruntime: the exported prompt encoder + mask decoder as a drop-in for ``decode``.

On a CPU, eager PyTorch spends much of a single prompt's decoder call in per-operator overhead; the same
graph in onnxruntime runs 2-3x faster (``benchmarks/perf_suite.py``, ``docs/inference.md``), which is what
an interactive click needs with ViT-B's 2 GMAC decoder. :class:`OnnxDecoding` exports the model's graph
(``samadapt.export.onnx_decoder``, with the adapter's IPS shift inside when it has one) into a private
temporary folder the first time a decoding mode is used, one graph per ``multimask`` value, and answers
exactly what :func:`samadapt.inference.decode.decode` (or ``decode_with_shift`` with the adapter's shift)
answers, within float tolerance (tested). CPU only: onnxruntime runs the CPU execution provider here.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from samadapt.errors import ConfigError
from samadapt.models.sam import LoadedModel


class OnnxDecoding:
    """SAM's prompt encoder + mask decoder (+ the adapter's IPS) run by onnxruntime on the CPU.

    Args:
        loaded: the SAM model whose decoder is exported (its weights are read once per graph).
        adapter: a ProMISe adapter whose IPS shift goes into the graph, or None.

    Raises :class:`ConfigError` when onnx or onnxruntime is missing (``pip install 'samadapt[export]'``).
    """

    def __init__(self, loaded: LoadedModel, adapter: Any = None):
        try:
            import onnx  # noqa: F401  (the exporter needs it)
            import onnxruntime  # noqa: F401
        except ImportError:
            raise ConfigError("decoding in onnxruntime needs onnx and onnxruntime; "
                              "pip install 'samadapt[export]', or decode with torch") from None
        self.loaded = loaded
        self.adapter = adapter if adapter is not None and getattr(adapter, "has_ips", False) else None
        self._folder = tempfile.TemporaryDirectory(prefix="samadapt-onnx-")
        self._sessions: dict[bool, Any] = {}

    @property
    def exported(self) -> tuple[bool, ...]:
        """The ``multimask`` settings whose graphs are exported and loaded so far."""
        return tuple(sorted(self._sessions))

    def prepare(self) -> None:
        """Export and load both graphs (one mask and three) now, so that no click waits for an export.

        An export takes seconds (ViT-B's decoder: several); a server calls this before it takes requests.
        """
        for multimask in (False, True):
            self.session(multimask)

    def session(self, multimask: bool):
        """The onnxruntime session of the graph for ``multimask`` (exported on first use)."""
        from samadapt.export.onnx_decoder import export_decoder, onnx_session

        if multimask not in self._sessions:
            path = Path(self._folder.name) / f"decoder_{'multi' if multimask else 'single'}.onnx"
            export_decoder(self.loaded, path, self.adapter, multimask=multimask)
            self._sessions[multimask] = onnx_session(path)
        return self._sessions[multimask]

    def __call__(
        self,
        embedding: torch.Tensor,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        boxes: torch.Tensor | None = None,
        mask_logits: torch.Tensor | None = None,
        multimask: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """As :func:`samadapt.inference.decode.decode`: low-res logits ``NxKx4gx4g`` and IoU ``NxK``.

        Args:
            embedding: ``1xCxgxg`` image embedding (CPU).
            points: (``NxPx2`` XY model-input pixels, ``NxP`` labels 1 / 0 / -1 padding) or None.
            boxes: ``Nx4`` XYXY model-input pixels, or None.
            mask_logits: ``Nx1x4gx4g`` previous low-res logits, or None.
            multimask: SAM's three ambiguity outputs instead of the single one.
        """
        from samadapt.export.onnx_decoder import onnx_prompt_arrays

        coords, labels = onnx_prompt_arrays(points=points, boxes=boxes)
        low = self.loaded.spec.low_res_mask_size
        if mask_logits is None:
            masks, has_mask = np.zeros((1, 1, low, low), np.float32), np.zeros(1, np.float32)
        else:
            masks, has_mask = mask_logits.detach().float().cpu().numpy(), np.ones(1, np.float32)
        feeds = {"image_embeddings": embedding.detach().float().cpu().numpy(), "point_coords": coords,
                 "point_labels": labels, "mask_input": masks, "has_mask_input": has_mask}
        low_res, iou = self.session(bool(multimask)).run(None, feeds)[:2]
        return torch.from_numpy(low_res), torch.from_numpy(iou)
