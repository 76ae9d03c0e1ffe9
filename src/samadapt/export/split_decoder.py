"""SAM's prompt encoder + mask decoder split into a per-image half and a per-prompt half, for fast clicks.

:class:`~samadapt.export.onnx_decoder.DecoderGraph` runs SAM's decoder as SAM writes it: every prompt
projects the whole ``g x g`` image embedding (``L = g^2`` keys) through ten ``D -> D/2`` linear layers
(keys and values of three token-to-image attentions, queries and output of two image-to-token ones), then
upscales it. At LiteMedSAM's 64 x 64 grid that is ~3.6 GFLOP per prompt, ~2.7 of them in those projections.
The two graphs here compute the same function (same weights, read from the ``segment_anything`` modules,
never copied; parity tested against :func:`~samadapt.export.onnx_decoder.decode_reference`) with less work:

1. **Prompt-independent terms, once per image** (:class:`DecoderImagePart`). Without a mask prompt, the
   keys entering the first :class:`~segment_anything.modeling.transformer.TwoWayAttentionBlock` are
   ``embedding + no_mask_embed``: the first token-to-image attention's keys ``k_proj(keys + pe)`` and values
   ``v_proj(keys)`` (stored split into heads), and the first image-to-token attention's queries
   ``q_proj(keys + pe)``, depend on the image only. So do the output tokens (with IPS: the mask tokens plus
   ``adapter.token_shift(embedding)``). A mask prompt changes the keys; then this half runs per call.
2. **Projections moved to the few tokens** (:class:`DecoderPromptPart`). An attention between ``T`` tokens
   (``T`` = 5 output tokens + the prompt's points, ~7-12) and ``L`` = 4096 image positions needs the image
   side only through products with the tokens: with ``Q_bd`` the ``HT x D'`` block-diagonal matrix of the
   ``H`` heads' token queries, token-to-image logits are ``(Q_bd W_k) (keys + pe)^T + Q_bd b_k`` and, as
   softmax rows sum to one, its values ``(A keys) W_v^T + b_v``; image-to-token logits are ``(keys + pe)
   (K_bd W_q)^T + (K_bd b_q)^T`` and its output ``A (V_bd W_o^T + b_o / H)`` (each head's weights sum to
   one). Each product costs ``L x D x HT`` multiply-adds instead of ``L x D x D'`` (``D' = D / 2`` = 128,
   ``HT`` = 56 for 7 tokens), and no ``L x D'`` tensor is split into heads (no image-sized transposes).
3. **Only what is read.** The last token-to-image attention updates each token on its own, and only the IoU
   token and the returned mask tokens are read after it: it attends with those alone (2 or 4 tokens). Only
   the ``K`` returned masks (1, or 3 with ``multimask``) go through the hypernetwork product.
4. **Upscaling channels-last.** SAM's two 2x2 stride-2 transposed convolutions are matrix products (with
   their bias) on the ``L x D`` keys as they are, sub-pixels as extra axes; LayerNorm2d is a LayerNorm over
   the last axis; only the final ``K`` mask channels are put back in image order.

At LiteMedSAM's 64 grid a box then costs 1.6 GFLOP per prompt (1.8 with two clicks more; ~0.8 of it the
upscaling, which no rearrangement avoids) against SAM's 3.6, plus 0.84 once per image (torch's
FlopCounterMode). Float32 results equal SAM's up to summation order (~1e-5 of the logits).

Graph inputs and outputs (float32):

- image part: ``image_embeddings`` ``1xDxgxg``, ``mask_input`` ``Mx1x4gx4g``, ``has_mask_input`` ``1`` (as
  the plain graph) -> ``keys`` ``MxLxD``, ``head_keys_t`` ``MxHxcxL``, ``head_values`` ``MxHxLxc``
  (``c = D' / H``), ``queries_proj`` ``MxLxD'``, ``output_tokens`` ``1x(1+4)xD`` (``M`` = 1 or the number of
  prompts);
- prompt part: those five, ``point_coords`` ``NxPx2`` and ``point_labels`` ``NxP`` (as the plain graph) ->
  ``low_res_logits`` ``NxKx4gx4g``, ``iou_predictions`` ``NxK``.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.transformer import Attention, TwoWayTransformer
from segment_anything.utils.onnx import SamOnnxModel
from torch import nn

from samadapt.errors import ConfigError
from samadapt.io.atomic import atomic_path
from samadapt.models.sam import LoadedModel

IMAGE_INPUTS = ("image_embeddings", "mask_input", "has_mask_input")
IMAGE_OUTPUTS = ("keys", "head_keys_t", "head_values", "queries_proj", "output_tokens")
PROMPT_INPUTS = (*IMAGE_OUTPUTS, "point_coords", "point_labels")
PROMPT_OUTPUTS = ("low_res_logits", "iou_predictions")


def check_splittable(sam: nn.Module) -> None:
    """:class:`ConfigError` unless ``sam``'s decoder has the structure this module rearranges (SAM's own)."""
    decoder = sam.mask_decoder
    transformer = getattr(decoder, "transformer", None)
    upscaling = list(getattr(decoder, "output_upscaling", []))
    ok = (isinstance(transformer, TwoWayTransformer) and len(transformer.layers) >= 1
          and transformer.layers[0].skip_first_layer_pe and len(upscaling) == 5
          and isinstance(upscaling[0], nn.ConvTranspose2d) and isinstance(upscaling[1], LayerNorm2d)
          and isinstance(upscaling[3], nn.ConvTranspose2d)
          and all(c.kernel_size == (2, 2) and c.stride == (2, 2) and c.padding == (0, 0)
                  for c in (upscaling[0], upscaling[3])))
    if not ok:
        raise ConfigError("this model's mask decoder is not segment_anything's TwoWayTransformer + 2x2 "
                          "upscaling; decode it with the plain graph (samadapt.export.onnx_decoder)")


def _flat_pe(model: SamOnnxModel) -> torch.Tensor:
    """``1xLxD``: the prompt encoder's dense positional encoding, row-major over the grid."""
    return model.model.prompt_encoder.get_dense_pe().flatten(2).transpose(1, 2)


class DecoderImagePart(SamOnnxModel):
    """The prompt-independent half; see the module docstring.

    Args:
        sam: the SAM model (its modules are used, not copied).
        token_shift: ``1xDxgxg -> 1xTxD`` mask-token shift (ProMISe's IPS), or None.
    """

    def __init__(self, sam: nn.Module, token_shift: nn.Module | None = None):
        check_splittable(sam)
        super().__init__(sam, return_single_mask=False)
        self.token_shift = token_shift

    def forward(self, image_embeddings: torch.Tensor, mask_input: torch.Tensor,
                has_mask_input: torch.Tensor) -> tuple[torch.Tensor, ...]:
        decoder = self.model.mask_decoder
        block = decoder.transformer.layers[0]
        dense = self._embed_masks(mask_input, has_mask_input)  # Mx D x g x g
        keys = (image_embeddings + dense).flatten(2).transpose(1, 2)  # MxLxD
        with_pe = keys + _flat_pe(self)
        attention = block.cross_attn_token_to_image
        m, length, _ = keys.shape
        heads = attention.num_heads
        head_keys_t = attention.k_proj(with_pe).reshape(m, length, heads, -1).permute(0, 2, 3, 1)  # MxHxcxL
        head_values = attention.v_proj(keys).reshape(m, length, heads, -1).transpose(1, 2)  # MxHxLxc
        queries_proj = block.cross_attn_image_to_token.q_proj(with_pe)
        mask_tokens = decoder.mask_tokens.weight
        if self.token_shift is not None:
            mask_tokens = mask_tokens + self.token_shift(image_embeddings)[0]
        output_tokens = torch.cat([decoder.iou_token.weight, mask_tokens], dim=0).unsqueeze(0)
        return keys, head_keys_t, head_values, queries_proj, output_tokens


def _head_mask(attention: Attention, like: torch.Tensor) -> torch.Tensor:
    """``Hx1xD'``: 1 where channel ``j`` of the ``D'`` internal channels belongs to head ``h``."""
    heads, width = attention.num_heads, attention.internal_dim
    channel_head = torch.arange(width, device=like.device) // (width // heads)
    return (channel_head == torch.arange(heads, device=like.device)[:, None]).to(like.dtype)[:, None, :]


def _block_diagonal(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``NxTxD'`` -> ``Nx(H*T)xD'``: row ``h*T + t`` holds head ``h``'s channels of token ``t``, zeros elsewhere."""
    n, t, width = x.shape
    return (x.unsqueeze(1) * mask).reshape(n, mask.shape[0] * t, width)


def _from_block_diagonal(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``Nx(H*T)xD'`` -> ``NxTxD'``: token ``t``'s head ``h`` channels from row ``h*T + t``."""
    n, ht, width = x.shape
    heads = mask.shape[0]
    return (x.reshape(n, heads, ht // heads, width) * mask).sum(1)


def _scale(attention: Attention) -> float:
    return 1.0 / math.sqrt(attention.internal_dim // attention.num_heads)


def _token_to_image_projected(attention: Attention, queries: torch.Tensor, head_keys_t: torch.Tensor,
                              head_values: torch.Tensor) -> torch.Tensor:
    """``attention(q=queries, k=..., v=...)`` with the image side projected and split into heads already.

    ``queries``: ``NxTxD``; ``head_keys_t``: ``MxHxcxL``; ``head_values``: ``MxHxLxc`` (``c = D' / H``).
    """
    q = attention.q_proj(queries) * _scale(attention)
    n, t, width = q.shape
    q = q.reshape(n, t, attention.num_heads, width // attention.num_heads).transpose(1, 2)  # NxHxTxc
    out = torch.softmax(q @ head_keys_t, dim=-1) @ head_values  # NxHxTxc
    return attention.out_proj(out.transpose(1, 2).reshape(n, t, width))


def _token_to_image(attention: Attention, queries: torch.Tensor, keys: torch.Tensor,
                    with_pe: torch.Tensor) -> torch.Tensor:
    """``attention(q=queries, k=with_pe, v=keys)`` for ``NxTxD`` queries on ``NxLxD`` image keys, projections folded
    into the queries (module docstring, 2)."""
    mask = _head_mask(attention, queries)
    q = _block_diagonal(attention.q_proj(queries) * _scale(attention), mask)  # Nx(HT)xD'
    logits = (q @ attention.k_proj.weight) @ with_pe.transpose(1, 2) + q @ attention.k_proj.bias[:, None]
    weights = torch.softmax(logits, dim=-1)  # Nx(HT)xL
    out = attention.v_proj(weights @ keys)  # softmax rows sum to one: A (K W^T + b) = (A K) W^T + b
    return attention.out_proj(_from_block_diagonal(out, mask))


def _image_to_token(attention: Attention, with_pe: torch.Tensor | None, token_keys: torch.Tensor,
                    token_values: torch.Tensor, projected: torch.Tensor | None = None) -> torch.Tensor:
    """``attention(q=with_pe, k=token_keys, v=token_values)``: ``NxLxD`` image queries on ``NxTxD`` tokens.

    ``projected``: the image queries already projected (``MxLxD'``).
    """
    mask = _head_mask(attention, token_keys)
    heads, tokens = mask.shape[0], token_keys.shape[1]
    k = _block_diagonal(attention.k_proj(token_keys) * _scale(attention), mask)  # Nx(HT)xD'
    if projected is not None:
        logits = projected @ k.transpose(1, 2)
    else:
        logits = with_pe @ (k @ attention.q_proj.weight).transpose(1, 2) + (k @ attention.q_proj.bias).unsqueeze(1)
    n, length = logits.shape[0], logits.shape[1]
    weights = torch.softmax(logits.reshape(n, length, heads, tokens), dim=-1).reshape(n, length, heads * tokens)
    v = _block_diagonal(attention.v_proj(token_values), mask)
    # each head's weights sum to one, a row of ``weights`` to H: b_o / H on every row of the right factor adds b_o
    return weights @ (v @ attention.out_proj.weight.t() + attention.out_proj.bias / heads)


class DecoderPromptPart(SamOnnxModel):
    """The per-prompt half; see the module docstring.

    Args:
        sam: the SAM model (its modules are used, not copied).
        multimask: SAM's three ambiguity outputs instead of the single-mask output.
    """

    def __init__(self, sam: nn.Module, multimask: bool = False):
        check_splittable(sam)
        super().__init__(sam, return_single_mask=False)
        self.multimask = bool(multimask)

    def forward(self, keys: torch.Tensor, head_keys_t: torch.Tensor, head_values: torch.Tensor,
                queries_proj: torch.Tensor, output_tokens: torch.Tensor, point_coords: torch.Tensor,
                point_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        decoder = self.model.mask_decoder
        transformer = decoder.transformer
        sparse = self._embed_points(point_coords, point_labels)  # NxPxD
        tokens = torch.cat([output_tokens.expand(sparse.shape[0], -1, -1), sparse], dim=1)  # NxTxD
        pe = _flat_pe(self)
        queries = tokens
        for i, block in enumerate(transformer.layers):  # TwoWayAttentionBlock.forward, rearranged
            if block.skip_first_layer_pe:
                queries = block.self_attn(q=queries, k=queries, v=queries)
            else:
                q = queries + tokens
                queries = queries + block.self_attn(q=q, k=q, v=queries)
            queries = block.norm1(queries)
            if i == 0:
                with_pe = None
                attn_out = _token_to_image_projected(block.cross_attn_token_to_image, queries + tokens, head_keys_t,
                                                     head_values)
            else:
                with_pe = keys + pe
                attn_out = _token_to_image(block.cross_attn_token_to_image, queries + tokens, keys, with_pe)
            queries = block.norm2(queries + attn_out)
            queries = block.norm3(queries + block.mlp(queries))
            attn_out = _image_to_token(block.cross_attn_image_to_token, with_pe, queries + tokens, queries,
                                       queries_proj if i == 0 else None)
            keys = block.norm4(keys + attn_out)
        # the last attention updates each token on its own, and only the IoU token and the returned mask
        # tokens are read after it: attend with those alone
        chosen = list(range(1, decoder.num_mask_tokens)) if self.multimask else [0]
        read = [0] + [1 + i for i in chosen]
        queries, tokens = queries[:, read, :], tokens[:, read, :]
        queries = transformer.norm_final_attn(queries + _token_to_image(
            transformer.final_attn_token_to_image, queries + tokens, keys, keys + pe))

        hyper = torch.stack([decoder.output_hypernetworks_mlps[i](queries[:, 1 + j, :]) for j, i in enumerate(chosen)],
                            dim=2)  # NxCxK
        low_res = self._upscale_masks(keys, hyper)
        iou = decoder.iou_prediction_head(queries[:, 0, :])
        return low_res, iou[:, 1:] if self.multimask else iou[:, :1]

    def _upscale_masks(self, keys: torch.Tensor, hyper: torch.Tensor) -> torch.Tensor:
        """``output_upscaling`` then ``hyper`` product, channels-last: ``NxLxD``, ``NxCxK`` -> ``NxKx4gx4g``."""
        up1, norm, act1, up2, act2 = self.model.mask_decoder.output_upscaling
        n, length, _ = keys.shape
        g = math.isqrt(length)
        c1, c2 = up1.out_channels, up2.out_channels
        # ConvTranspose2d(k=2, s=2): out[2y+i, 2x+j, o] = sum_c in[y, x, c] w[c, o, i, j] + b[o]; 2D operands
        # and the bias inside the product (onnxruntime's Gemm), sub-pixels (i, j) before channels o
        w1 = up1.weight.permute(2, 3, 1, 0).reshape(4 * c1, up1.in_channels)
        x = F.linear(keys.reshape(n * length, -1), w1, up1.bias.repeat(4)).reshape(n, length, 4, c1)
        x = act1(F.layer_norm(x, (c1,), norm.weight, norm.bias, norm.eps)).reshape(n * length * 4, c1)
        w2 = up2.weight.permute(2, 3, 1, 0).reshape(4 * c2, c1)
        x = act2(F.linear(x, w2, up2.bias.repeat(4))).reshape(n, length * 16, c2)
        masks = x @ hyper  # Nx(L*16)xK, positions (y, x, i1, j1, i2, j2)
        k = hyper.shape[2]
        masks = masks.reshape(n, g, g, 2, 2, 2, 2, k).permute(0, 7, 1, 3, 5, 2, 4, 6)
        return masks.reshape(n, k, 4 * g, 4 * g)


def _example_image_inputs(loaded: LoadedModel) -> tuple[torch.Tensor, ...]:
    spec = loaded.spec
    g, low = spec.embedding_size, spec.low_res_mask_size
    generator = torch.Generator().manual_seed(0)
    return (torch.randn(1, spec.prompt_embed_dim, g, g, generator=generator), torch.zeros(1, 1, low, low),
            torch.zeros(1))


def _export(module: nn.Module, inputs: tuple[torch.Tensor, ...], out: Path, input_names: tuple[str, ...],
            output_names: tuple[str, ...], dynamic: dict, opset: int) -> Path:
    with atomic_path(out, suffix=".onnx") as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python scalars, the exporter's deprecation
        torch.onnx.export(module, inputs, str(tmp), dynamo=False, input_names=list(input_names),
                          output_names=list(output_names), dynamic_axes=dynamic, opset_version=opset,
                          do_constant_folding=True)
    return out


def export_image_part(loaded: LoadedModel, out: str | os.PathLike[str], adapter: nn.Module | None = None,
                      opset: int = 17) -> Path:
    """Write :class:`DecoderImagePart` of ``loaded`` (with the adapter's IPS shift, if it has one) to ``out``."""
    shift = _adapter_shift(adapter)
    graph = DecoderImagePart(loaded.sam, shift).eval()
    batch = {0: "mask_batch"}
    dynamic = {"mask_input": batch, **{name: batch for name in IMAGE_OUTPUTS[:4]}}
    return _export(graph, _example_image_inputs(loaded), Path(out), IMAGE_INPUTS, IMAGE_OUTPUTS, dynamic, opset)


def export_prompt_part(loaded: LoadedModel, out: str | os.PathLike[str], multimask: bool = False,
                       opset: int = 17) -> Path:
    """Write :class:`DecoderPromptPart` of ``loaded`` to ``out`` (any number of prompts and points)."""
    image = DecoderImagePart(loaded.sam).eval()
    with torch.no_grad():
        parts = image(*_example_image_inputs(loaded))
    size = loaded.spec.image_size
    coords = torch.tensor([[[0.2, 0.3], [0.6, 0.9]], [[0.1, 0.1], [0.5, 0.4]]]) * size
    labels = torch.tensor([[2.0, 3.0], [1.0, -1.0]])
    prompts = {0: "num_prompts", 1: "num_points"}
    dynamic = {**{name: {0: "mask_batch"} for name in IMAGE_OUTPUTS[:4]}, "point_coords": prompts,
               "point_labels": prompts, **{name: {0: "num_prompts"} for name in PROMPT_OUTPUTS}}
    graph = DecoderPromptPart(loaded.sam, multimask).eval()
    return _export(graph, (*parts, coords, labels), Path(out), PROMPT_INPUTS, PROMPT_OUTPUTS, dynamic, opset)


def _adapter_shift(adapter: nn.Module | None) -> nn.Module | None:
    if adapter is None or getattr(adapter, "ips", None) is None:
        return None
    from samadapt.export.onnx_decoder import _AdapterShift

    return _AdapterShift(adapter)
