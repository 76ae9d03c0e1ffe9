"""Decoding prompts on an image embedding: the one :class:`Decoder` interface and its torch implementation.

Everything after the image encoder is a decoder call: N prompts of one image, on its embedding, give N
low-res masks. The frames (see :mod:`samadapt.inference.image_frame` for the original image's):

- ``embedding``: ``1xCxgxg``, one image's embedding (``C = spec.prompt_embed_dim``, ``g =
  spec.embedding_size``), from :func:`samadapt.models.embedding_cache.encode_slices` or the cache;
- prompts in *model-input pixels*, the ``S x S`` frame (``S = spec.image_size``; the image resized to its
  longest side ``S`` and padded at the bottom and right): clicks ``NxPx2`` XY with labels ``NxP`` (1
  positive, 0 negative, -1 padding), boxes ``Nx4`` XYXY, previous low-res logits ``Nx1x4gx4g``;
- outputs: low-res logits ``NxKx4gx4g`` over the model-input frame (``4g = spec.low_res_mask_size``;
  :func:`upscale_logits` takes them to ``SxS``) and predicted IoU ``NxK``: ``K = 1`` (SAM's single-mask
  output, mask token 0), or ``K = 3`` with ``multimask`` (its ambiguity outputs, mask tokens 1-3).

Implementations: :class:`SamDecoder` (torch: SAM's prompt encoder and mask decoder, optionally with a
ProMISe adapter's IPS shift of the mask tokens) and
:class:`samadapt.inference.onnx_decoding.OnnxDecoding` (the same in onnxruntime, tested to agree).
:meth:`SamDecoder.all_outputs` is torch only: mixed click / box batches and all four mask tokens' outputs
(:mod:`samadapt.models.region_decode`), what prompting rounds in training and evaluation need.

IPS (ProMISe's incremental pattern shifting) adds an image-conditioned ``TxC`` shift to the decoder's
learned mask tokens (``sam.mask_decoder.mask_tokens.weight``, ``T = num_mask_tokens`` = 4, ``C =
transformer_dim``) before they enter the two-way transformer. Nothing of SAM is copied or changed: the
decoder runs through :func:`torch.func.functional_call` with ``mask_tokens.weight`` replaced by ``W +
shift`` for that call only; SAM's own tensor stays as it is (and frozen) and the gradient flows into the
shift. ``segment_anything``'s decoder takes one image embedding per call (it repeats it over the prompts),
so a shift is one image's ``1xTxC`` too.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from torch import nn
from torch.func import functional_call

from samadapt.models.region_decode import encode_region_prompts
from samadapt.prompts.region_prompts import RegionPrompts

MASK_TOKENS = "mask_tokens.weight"

TokenShift = Callable[[torch.Tensor], "torch.Tensor | None"]
"""``embedding 1xCxgxg -> shift 1xTxC`` (or None: no shift), e.g. ``PromiseAdapter.token_shift``."""


@runtime_checkable
class Decoder(Protocol):
    """SAM's prompt encoder + mask decoder on one image embedding (frames and shapes: module docstring)."""

    def __call__(
        self,
        embedding: Any,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        boxes: torch.Tensor | None = None,
        mask_logits: torch.Tensor | None = None,
        multimask: bool = False,
        image_key: Hashable | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """N prompts on one image: (low-res logits ``NxKx4gx4g``, predicted IoU ``NxK``).

        Args:
            embedding: ``1xCxgxg`` image embedding: a tensor, or an array of any float dtype.
            points: (``NxPx2`` XY model-input pixels, ``NxP`` labels 1 / 0 / -1 padding) or None.
            boxes: ``Nx4`` XYXY model-input pixels, or None.
            mask_logits: ``Nx1x4gx4g`` previous low-res logits (the mask prompt), or None.
            multimask: SAM's three ambiguity outputs (``K = 3``) instead of the single one (``K = 1``).
            image_key: names the image of ``embedding`` (the same object under the same key), so that a
                decoder may keep per-image terms between calls; None: nothing is kept.
        """
        ...


def upscale_logits(low_res: torch.Tensor, image_size: int) -> torch.Tensor:
    """Low-res logits ``...x4gx4g`` -> model-input logits ``...xSxS`` (bilinear, as ``Sam.postprocess_masks``)."""
    shape = low_res.shape
    flat = low_res.reshape(-1, 1, shape[-2], shape[-1])
    up = F.interpolate(flat, (image_size, image_size), mode="bilinear", align_corners=False)
    return up.reshape(*shape[:-2], image_size, image_size)


class SamDecoder:
    """The torch :class:`Decoder`: SAM's own prompt encoder and mask decoder, mask tokens optionally shifted.

    Args:
        sam: the ``segment_anything`` model (used, not copied).
        token_shift: None (plain SAM); one image's fixed shift ``1xTxC`` (or ``TxC``), e.g. computed by the
            caller for a training step; or a :data:`TokenShift` computing it from each call's embedding
            (``adapter.token_shift`` of a ProMISe adapter with IPS).

    ``image_key`` is accepted and ignored (nothing is kept between calls). An embedding that is not a tensor
    is converted to float32 on SAM's device; a tensor is used as it is (its dtype and device).
    """

    def __init__(self, sam: Sam, token_shift: torch.Tensor | TokenShift | None = None):
        self.sam = sam
        self.token_shift = token_shift

    @classmethod
    def for_adapter(cls, sam: Sam, adapter: Any) -> SamDecoder:
        """SAM with ``adapter``'s IPS shift when it has one (a ProMISe adapter, or None: plain SAM)."""
        has_ips = adapter is not None and bool(getattr(adapter, "has_ips", False))
        return cls(sam, adapter.token_shift if has_ips else None)

    def __call__(
        self,
        embedding: Any,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        boxes: torch.Tensor | None = None,
        mask_logits: torch.Tensor | None = None,
        multimask: bool = False,
        image_key: Hashable | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """See :meth:`Decoder.__call__`."""
        embedding = self._as_tensor(embedding)
        sparse, dense = self.sam.prompt_encoder(points=points, boxes=boxes, masks=mask_logits)
        return self._run("forward", embedding, sparse, dense, multimask_output=multimask)

    def all_outputs(
        self, embedding: Any, prompts: RegionPrompts, mask_logits: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All four mask tokens' outputs for N regions with mixed prompts (torch only).

        Args:
            embedding: ``1xCxgxg`` image embedding.
            prompts: the regions' clicks and boxes (model-input pixels), on the decoder's device; see
                :func:`samadapt.models.region_decode.encode_region_prompts` for how they are embedded.
            mask_logits: ``Nx1x4gx4g`` previous low-res logits (the mask prompt), or None.
        Returns:
            low-res logits ``Nx4x4gx4g`` (output 0: single-mask, 1..3: SAM's ambiguity outputs) and IoU
            predictions ``Nx4``; :func:`samadapt.models.region_decode.pick_outputs` takes SAM's choice.
        """
        embedding = self._as_tensor(embedding)
        sparse, dense = encode_region_prompts(self.sam, prompts, mask_logits)
        return self._run("predict_masks", embedding, sparse, dense)

    def shift_for(self, embedding: torch.Tensor) -> torch.Tensor | None:
        """The mask-token shift ``TxC`` used for ``embedding`` (None: plain SAM)."""
        shift = self.token_shift(embedding) if callable(self.token_shift) else self.token_shift
        if shift is None:
            return None
        tokens = self.sam.mask_decoder.mask_tokens.weight
        if shift.dim() == 3:
            if shift.shape[0] != 1:
                raise ValueError(f"one image per call: shift must be 1xTxC, got {tuple(shift.shape)}")
            shift = shift[0]
        if shift.shape != tokens.shape:
            raise ValueError(f"shift {tuple(shift.shape)} does not fit the mask tokens {tuple(tokens.shape)}")
        return shift

    def _as_tensor(self, embedding: Any) -> torch.Tensor:
        if isinstance(embedding, torch.Tensor):
            return embedding
        device = self.sam.mask_decoder.mask_tokens.weight.device
        return torch.from_numpy(np.asarray(embedding, dtype=np.float32)).to(device)

    def _run(self, method: str, embedding: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor,
             **extra: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM's mask decoder's ``method`` (``forward`` or ``predict_masks``), with the shifted tokens if any."""
        kwargs = {"image_embeddings": embedding, "image_pe": self.sam.prompt_encoder.get_dense_pe(),
                  "sparse_prompt_embeddings": sparse, "dense_prompt_embeddings": dense, **extra}
        decoder = self.sam.mask_decoder
        shift = self.shift_for(embedding)
        if shift is None:
            return _call(decoder, method, kwargs)
        tokens = decoder.mask_tokens.weight
        shifted = {f"decoder.{MASK_TOKENS}": tokens + shift.to(tokens.dtype)}
        return functional_call(_DecoderMethod(decoder), shifted, args=(method,), kwargs=kwargs)


class _DecoderMethod(nn.Module):
    """Calls a method of SAM's mask decoder, so that :func:`~torch.func.functional_call` can stand in for its
    tensors in methods other than ``forward`` too."""

    def __init__(self, decoder: nn.Module):
        super().__init__()
        self.decoder = decoder

    def forward(self, method: str, **kwargs: Any) -> Any:
        return _call(self.decoder, method, kwargs)


def _call(decoder: nn.Module, method: str, kwargs: dict) -> Any:
    """``decoder(**kwargs)`` for ``forward`` (through ``nn.Module.__call__``: hooks run), else the method."""
    return decoder(**kwargs) if method == "forward" else getattr(decoder, method)(**kwargs)
