"""Prompt decoding in onnxruntime: the ONNX :class:`~samadapt.models.decoder.Decoder`.

On a CPU, eager PyTorch spends much of a single prompt's decoder call in per-operator overhead, and SAM's
decoder projects the whole image embedding for every prompt. :class:`OnnxDecoding` runs the decoder split
in two (:mod:`samadapt.export.split_decoder`): a per-image graph computes what does not depend on the
prompt (the first attention block's image-side projections, the output tokens with the adapter's IPS
shift), kept in memory for the last ``cached_images`` embeddings; a per-prompt graph does the rest with
the projections moved to the few prompt tokens. Both are exported into a private temporary folder (one
prompt graph per ``multimask`` value) and answer exactly what the torch decoder
(:meth:`SamDecoder.for_adapter(sam, adapter) <samadapt.models.decoder.SamDecoder.for_adapter>`) answers, within
float tolerance (tested). CPU only:
onnxruntime runs the CPU execution provider here, with torch's thread count at export and workers that do
not spin between runs (torch works between them; see :func:`~samadapt.export.onnx_decoder.onnx_session`).
"""

from __future__ import annotations

import tempfile
import threading
from collections import OrderedDict
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from samadapt.errors import ConfigError
from samadapt.models.sam import LoadedModel

DEFAULT_CACHED_IMAGES = 8  # medsam_lite: ~10 MiB of float32 image-side terms each


def _float32(array: Any) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    return np.ascontiguousarray(array, dtype=np.float32)


class OnnxDecoding:
    """SAM's prompt encoder + mask decoder (+ the adapter's IPS) run by onnxruntime on the CPU: a
    :class:`~samadapt.models.decoder.Decoder`.

    Args:
        loaded: the SAM model whose decoder is exported (its weights are read once per graph).
        adapter: a ProMISe adapter whose IPS shift goes into the graph, or None.
        cached_images: how many images' prompt-independent terms to keep (least recently used dropped).

    Raises :class:`ConfigError` when onnx or onnxruntime is missing (``pip install 'samadapt[export]'``).
    Thread-safe: the cache is locked, and onnxruntime sessions may run concurrently.
    """

    def __init__(self, loaded: LoadedModel, adapter: Any = None, cached_images: int = DEFAULT_CACHED_IMAGES):
        try:
            import onnx  # noqa: F401  (the exporter needs it)
            import onnxruntime  # noqa: F401
        except ImportError:
            raise ConfigError("decoding in onnxruntime needs onnx and onnxruntime; "
                              "pip install 'samadapt[export]', or decode with torch") from None
        if isinstance(cached_images, bool) or not isinstance(cached_images, int) or cached_images < 0:
            raise ConfigError(f"cached_images {cached_images!r}: give 0 or more")
        self.loaded = loaded
        self.adapter = adapter if adapter is not None and getattr(adapter, "has_ips", False) else None
        self.cached_images = cached_images
        self.image_part_runs = 0  # calls of the per-image graph (cache misses and mask prompts)
        self._folder = tempfile.TemporaryDirectory(prefix="samadapt-onnx-")
        self._image_session: Any = None
        self._sessions: dict[bool, Any] = {}
        self._images: OrderedDict[Hashable, tuple[Any, list[np.ndarray]]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def exported(self) -> tuple[bool, ...]:
        """The ``multimask`` settings whose prompt graphs are exported and loaded so far."""
        return tuple(sorted(self._sessions))

    def prepare(self) -> None:
        """Export and load the per-image graph and both prompt graphs (one mask and three) now.

        An export takes seconds; a server calls this before it takes requests, so that no click waits.
        """
        self.image_session()
        for multimask in (False, True):
            self.session(multimask)

    def image_session(self):
        """The onnxruntime session of the per-image graph (exported on first use)."""
        from samadapt.export.onnx_decoder import onnx_session
        from samadapt.export.split_decoder import export_image_part

        with self._lock:
            if self._image_session is None:
                path = Path(self._folder.name) / "decoder_image.onnx"
                self._image_session = onnx_session(export_image_part(self.loaded, path, self.adapter), spinning=False)
            return self._image_session

    def session(self, multimask: bool):
        """The onnxruntime session of the per-prompt graph for ``multimask`` (exported on first use)."""
        from samadapt.export.onnx_decoder import onnx_session
        from samadapt.export.split_decoder import export_prompt_part

        multimask = bool(multimask)
        with self._lock:
            if multimask not in self._sessions:
                path = Path(self._folder.name) / f"decoder_prompt_{'multi' if multimask else 'single'}.onnx"
                self._sessions[multimask] = onnx_session(export_prompt_part(self.loaded, path, multimask),
                                                       spinning=False)
            return self._sessions[multimask]

    def image_terms(self, embedding: Any, mask_logits: Any = None, image_key: Hashable | None = None
                    ) -> list[np.ndarray]:
        """The per-image graph's outputs for ``embedding`` (``1xCxgxg``) and an optional mask prompt.

        Without a mask prompt and with an ``image_key``, the result is kept for that key as long as the same
        ``embedding`` object comes with it (a new object under an old key is computed again).
        """
        keep = mask_logits is None and image_key is not None and self.cached_images > 0
        if keep:
            with self._lock:
                hit = self._images.get(image_key)
                if hit is not None and hit[0] is embedding:
                    self._images.move_to_end(image_key)
                    return hit[1]
        low = self.loaded.spec.low_res_mask_size
        if mask_logits is None:
            masks, has_mask = np.zeros((1, 1, low, low), np.float32), np.zeros(1, np.float32)
        else:
            masks, has_mask = _float32(mask_logits), np.ones(1, np.float32)
        feeds = {"image_embeddings": _float32(embedding), "mask_input": masks, "has_mask_input": has_mask}
        terms = self.image_session().run(None, feeds)
        with self._lock:
            self.image_part_runs += 1
            if keep:
                self._images[image_key] = (embedding, terms)
                while len(self._images) > self.cached_images:
                    self._images.popitem(last=False)
        return terms

    def __call__(
        self,
        embedding: Any,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        boxes: torch.Tensor | None = None,
        mask_logits: torch.Tensor | None = None,
        multimask: bool = False,
        image_key: Hashable | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`Decoder.__call__ <samadapt.models.decoder.Decoder.__call__>`: low-res logits ``NxKx4gx4g``
        and IoU ``NxK``.

        Args:
            embedding: ``1xCxgxg`` image embedding (CPU tensor or array, any float dtype).
            points: (``NxPx2`` XY model-input pixels, ``NxP`` labels 1 / 0 / -1 padding) or None.
            boxes: ``Nx4`` XYXY model-input pixels, or None.
            mask_logits: ``Nx1x4gx4g`` previous low-res logits, or None.
            multimask: SAM's three ambiguity outputs instead of the single one.
            image_key: names the image of ``embedding`` so that its prompt-independent terms are computed
                once (see :meth:`image_terms`); None computes them on every call.
        """
        from samadapt.export.onnx_decoder import onnx_prompt_arrays
        from samadapt.export.split_decoder import IMAGE_OUTPUTS

        coords, labels = onnx_prompt_arrays(points=points, boxes=boxes)
        feeds = dict(zip(IMAGE_OUTPUTS, self.image_terms(embedding, mask_logits, image_key), strict=True))
        feeds["point_coords"], feeds["point_labels"] = coords, labels
        low_res, iou = self.session(bool(multimask)).run(None, feeds)
        return torch.from_numpy(low_res), torch.from_numpy(iou)
