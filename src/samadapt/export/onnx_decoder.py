"""``samadapt export-onnx``: SAM's prompt encoder + mask decoder (+ ProMISe's IPS) as one ONNX graph.

The exported graph is the cheap half of SAM, the part that runs once per prompt batch on a cached image
embedding (the image encoder runs once per image and stays in torch, or in the embedding cache). It is
``segment_anything``'s own :class:`~segment_anything.utils.onnx.SamOnnxModel` (its traceable point and mask
embedding), subclassed to return what a :class:`samadapt.models.decoder.Decoder` returns and to add IPS:

Inputs (all float32):

- ``image_embeddings``: ``1xCxgxg``, one image's embedding (``C = spec.prompt_embed_dim``, ``g =
  spec.embedding_size``), from :func:`samadapt.models.embedding_cache.encode_slices` or the cache.
- ``point_coords``: ``NxPx2`` XY in model-input pixels (the ``S x S`` frame); ``point_labels``: ``NxP``:
  1 positive click, 0 negative click, 2 and 3 a box's top-left and bottom-right corner, -1 padding. ``N``
  (prompts, i.e. objects) and ``P`` (points per prompt) are dynamic. :func:`onnx_prompt_arrays` builds
  them from boxes and/or clicks exactly as SAM's prompt encoder orders them (clicks, then box corners; a
  padding point when there is no box).
- ``mask_input``: ``Mx1x4gx4g`` previous low-res logits (``M`` = 1 or ``N``); ``has_mask_input``: ``1``,
  1.0 to use them, 0.0 to ignore them (pass zeros ``1x1x4gx4g``).

Outputs: ``low_res_logits`` ``NxKx4gx4g`` and ``iou_predictions`` ``NxK`` (``K`` = 1, or 3 with
``multimask``: SAM's ambiguity outputs), plus ``logits`` ``NxKxSxS`` (bilinear to the model-input frame,
as :func:`~samadapt.models.decoder.upscale_logits`) when exported with ``upscale``.

With a ProMISe adapter that has IPS (``samadapt.promise``), its shift ``adapter.token_shift(embedding)``
(``1xTxC``) is computed inside the graph from ``image_embeddings`` and added to the mask tokens, as
:class:`samadapt.models.decoder.SamDecoder` does; its APM (points from encoder features) is
not part of this graph. A ``<out>.json`` sidecar (``decoder.onnx.json``) records the model, shapes,
conventions and the parity.

Decision: the exporter is torch's TorchScript-based one (``torch.onnx.export(..., dynamo=False)``): it
works offline with torch alone, whereas the default torch.export-based exporter needs ``onnxscript``.
onnxruntime (extra ``export``) is needed only to check parity.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from segment_anything.utils.onnx import SamOnnxModel
from torch import nn

from samadapt.errors import CheckpointError, ConfigError
from samadapt.io.atomic import atomic_path, write_json_atomic
from samadapt.models.decoder import SamDecoder
from samadapt.models.sam import LoadedModel, load_sam

INPUTS = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input")
DEFAULT_OPSET = 17
EXPORTER = "torch.onnx.export(dynamo=False) (TorchScript-based exporter)"


class DecoderGraph(SamOnnxModel):
    """The traceable prompt encoder + mask decoder (+ IPS) of one SAM; see the module docstring.

    Args:
        sam: the SAM model (its prompt encoder and mask decoder are used, not copied).
        multimask: SAM's three ambiguity outputs instead of the single-mask output.
        token_shift: ``1xCxgxg -> 1xTxC`` mask-token shift (IPS), or None.
        upscale: also output the logits bilinearly upscaled to the ``S x S`` model-input frame.
    """

    def __init__(self, sam: nn.Module, multimask: bool = False, token_shift: nn.Module | None = None,
                 upscale: bool = False):
        super().__init__(sam, return_single_mask=False)
        self.multimask, self.token_shift, self.upscale = bool(multimask), token_shift, bool(upscale)

    def forward(self, image_embeddings: torch.Tensor, point_coords: torch.Tensor, point_labels: torch.Tensor,
                mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> tuple[torch.Tensor, ...]:
        decoder = self.model.mask_decoder
        kwargs = {"image_embeddings": image_embeddings, "image_pe": self.model.prompt_encoder.get_dense_pe(),
                  "sparse_prompt_embeddings": self._embed_points(point_coords, point_labels),
                  "dense_prompt_embeddings": self._embed_masks(mask_input, has_mask_input),
                  "multimask_output": self.multimask}
        if self.token_shift is None:
            low_res, iou = decoder(**kwargs)
        else:  # the tracer refuses torch.func.functional_call (SamDecoder's way): swap the tokens
            tokens = decoder.mask_tokens
            decoder.mask_tokens = _ShiftedTokens(tokens.weight + self.token_shift(image_embeddings)[0])
            try:
                low_res, iou = decoder(**kwargs)
            finally:
                decoder.mask_tokens = tokens
        if not self.upscale:
            return low_res, iou
        logits = torch.nn.functional.interpolate(low_res, (self.img_size, self.img_size), mode="bilinear",
                                                 align_corners=False)
        return low_res, iou, logits


class _ShiftedTokens(nn.Module):
    """Stands in for the decoder's ``mask_tokens`` embedding during one call: ``weight`` is ``TxC`` shifted."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = weight


class _AdapterShift(nn.Module):
    """``adapter.token_shift`` as a module, so that it traces into the graph."""

    def __init__(self, adapter: nn.Module):
        super().__init__()
        self.adapter = adapter

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.adapter.token_shift(embedding)


def onnx_prompt_arrays(
    points: tuple[torch.Tensor, torch.Tensor] | None = None, boxes: torch.Tensor | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``point_coords`` ``NxPx2`` and ``point_labels`` ``NxP`` float32 for the graph, from SAM-style prompts.

    Args:
        points: (``NxQx2`` XY model-input pixels, ``NxQ`` labels 1/0/-1) clicks, or None.
        boxes: ``Nx4`` XYXY model-input pixels, or None (at least one of the two).

    The order is that of SAM's prompt encoder: clicks first, then the box's two corners (labels 2, 3); with
    clicks only, one padding point (label -1) is appended, as the prompt encoder does.
    """
    if points is None and boxes is None:
        raise ConfigError("a prompt needs points or a box")
    coords, labels = [], []
    if points is not None:
        coords.append(points[0].float())
        labels.append(points[1].float())
    if boxes is not None:
        coords.append(boxes.float().reshape(-1, 2, 2))
        labels.append(torch.tensor([2.0, 3.0]).expand(boxes.shape[0], 2))
    else:
        n = points[0].shape[0]
        coords.append(torch.zeros(n, 1, 2))
        labels.append(-torch.ones(n, 1))
    return torch.cat(coords, 1).cpu().numpy(), torch.cat(labels, 1).cpu().numpy()


def export_source(model: str, adapter_path: str | None = None) -> tuple[LoadedModel, nn.Module | None]:
    """The SAM (and ProMISe adapter, or None) that ``model`` names.

    ``model``: a registry name, a SAM-format ``.pth``, a ``samadapt train`` run folder (its ``model.pth``)
    or a ``samadapt adapt`` run folder (its ``adapter.pt`` and the base SAM it was trained on).
    ``adapter_path``: an adapter (file or run folder) to add to ``model``, verified to fit it.
    """
    path = Path(model).expanduser()
    adapter = None
    if path.is_dir():
        if (path / "adapter.pt").is_file() and adapter_path is None:
            from samadapt.promise.adapter import load_adapter, load_base_model

            adapter = load_adapter(path)
            return load_base_model(adapter), adapter
        if not (path / "model.pth").is_file():
            raise CheckpointError(f"{path}: neither model.pth (samadapt train) nor adapter.pt (samadapt adapt) in "
                                  "this folder; pass a finished run folder, a .pth file or a registry name")
        model = str(path / "model.pth")
    loaded = load_sam(model)
    if adapter_path is not None:
        from samadapt.promise.adapter import check_base_model, load_adapter

        adapter = load_adapter(adapter_path)
        check_base_model(adapter, loaded)
    return loaded, adapter


def example_inputs(loaded: LoadedModel, n_prompts: int = 3, n_points: int = 2) -> tuple[torch.Tensor, ...]:
    """Inputs of the graph's shapes (random embedding, boxes as corner pairs), for tracing and checks."""
    spec = loaded.spec
    g, low = spec.embedding_size, spec.low_res_mask_size
    generator = torch.Generator().manual_seed(0)
    coords = torch.rand(n_prompts, n_points, 2, generator=generator) * spec.image_size
    labels = torch.tensor([2.0, 3.0] + [1.0] * (n_points - 2)).expand(n_prompts, n_points).contiguous()
    return (torch.randn(1, spec.prompt_embed_dim, g, g, generator=generator), coords, labels,
            torch.zeros(1, 1, low, low), torch.zeros(1))


def export_decoder(
    loaded: LoadedModel,
    out: str | os.PathLike[str],
    adapter: nn.Module | None = None,
    multimask: bool | None = None,
    upscale: bool = False,
    opset: int = DEFAULT_OPSET,
    verify_counts: tuple[int, ...] | None = None,
) -> dict:
    """Write ``loaded``'s prompt encoder + mask decoder (+ the adapter's IPS) to ONNX at ``out``, atomically.

    ``multimask`` defaults to the adapter's decoding mode (ProMISe: multimask, take output 0), else False.
    With ``verify_counts`` (prompt counts), :func:`check_parity` runs the file in onnxruntime against the
    torch model and its summary goes into the sidecar. Writes the sidecar ``<out>.json`` (see
    :func:`sidecar_path`) and returns its contents.

    Raises:
        ConfigError: ``out`` is a folder, or ``opset`` is below 13.
    """
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"{out}: is a folder; give the .onnx file to write, e.g. --out {out / 'decoder.onnx'}")
    if opset < 13:
        raise ConfigError(f"opset {opset}: the decoder needs ONNX opset 13 or newer (default {DEFAULT_OPSET})")
    if verify_counts:
        _session_options()  # onnxruntime present: fail before writing anything
    has_ips = adapter is not None and getattr(adapter, "ips", None) is not None
    if multimask is None:
        multimask = bool(adapter.multimask) if adapter is not None else False
    graph = DecoderGraph(loaded.sam, multimask, _AdapterShift(adapter) if has_ips else None, upscale).eval()
    outputs = ["low_res_logits", "iou_predictions"] + (["logits"] if upscale else [])
    dynamic = {"point_coords": {0: "num_prompts", 1: "num_points"}, "point_labels": {0: "num_prompts", 1: "num_points"},
               "mask_input": {0: "mask_batch"}, **{name: {0: "num_prompts"} for name in outputs}}
    try:
        with atomic_path(out, suffix=".onnx") as tmp, torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about SAM's Python scalars, the exporter's deprecation
            torch.onnx.export(graph, example_inputs(loaded), str(tmp), dynamo=False, input_names=list(INPUTS),
                              output_names=outputs, dynamic_axes=dynamic, opset_version=opset,
                              do_constant_folding=True)
    except OSError as err:
        raise ConfigError(f"{out}: cannot write there ({err.strerror or err}); pass another --out") from None
    spec = loaded.spec
    info = {
        "format": "samadapt-onnx-decoder", "model": spec.name, "checkpoint": str(loaded.checkpoint or ""),
        "architecture": spec.architecture(), "image_size": spec.image_size,
        "embedding_shape": [1, spec.prompt_embed_dim, spec.embedding_size, spec.embedding_size],
        "low_res_size": spec.low_res_mask_size, "inputs": list(INPUTS), "outputs": outputs,
        "multimask": multimask, "mask_index": 0, "ips": has_ips,  # the output read: always the first
        "adapter_base_model": getattr(adapter, "base_model", None),
        "prompts": "point_coords NxPx2 XY model-input px; point_labels 1 pos, 0 neg, 2/3 box corners, -1 pad",
        "opset": opset, "exporter": EXPORTER, "torch": torch.__version__,
    }
    write_json_atomic(sidecar_path(out), info)
    if verify_counts:
        parity = check_parity(out, loaded, adapter, tuple(verify_counts))
        info["parity"] = {**{k: v for k, v in parity.items() if k != "cases"}, "prompt_counts": list(verify_counts)}
        write_json_atomic(sidecar_path(out), info)
    return info


def sidecar_path(onnx_path: str | os.PathLike[str]) -> Path:
    """``decoder.onnx`` -> ``decoder.onnx.json`` (never ``model.json``, the sidecar of a ``model.pth`` beside it)."""
    return Path(f"{onnx_path}.json")


def _session_options():
    """onnxruntime's session options (torch's thread count, all graph optimisations); ConfigError without it."""
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError("onnxruntime is not installed; pip install 'samadapt[export]' (or --no-verify)") from None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL  # fusions (Gemm, Gelu...)
    return options


def onnx_session(path: str | os.PathLike[str], spinning: bool = True):
    """An onnxruntime CPU inference session of an exported decoder.

    ``spinning=False``: its worker threads sleep as soon as a run ends instead of spinning for more work.
    Where torch works between runs (a click's prompt conversion and mask resizing), spinning workers hold
    the cores that torch's OpenMP threads then wait for: with 2 threads each, a click decoded in the main
    thread took 42-46 ms with spinning and 22-24 ms without (``docs/medsam_lite.md``).
    """
    options = _session_options()
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def decode_reference(
    loaded: LoadedModel, adapter: nn.Module | None, embedding: torch.Tensor, multimask: bool,
    points: tuple[torch.Tensor, torch.Tensor] | None = None, boxes: torch.Tensor | None = None,
    mask_logits: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The torch model's low-res logits ``NxKx4gx4g`` and IoU ``NxK`` for the same prompts (the parity target:
    :meth:`SamDecoder.for_adapter <samadapt.models.decoder.SamDecoder.for_adapter>`)."""
    with torch.inference_mode():
        return SamDecoder.for_adapter(loaded.sam, adapter)(embedding, points=points, boxes=boxes,
                                                           mask_logits=mask_logits, multimask=multimask)


def check_parity(
    path: str | os.PathLike[str],
    loaded: LoadedModel,
    adapter: nn.Module | None = None,
    prompt_counts: tuple[int, ...] = (1, 4, 16),
    seed: int = 0,
) -> dict:
    """Run the exported graph in onnxruntime against the torch model on random embeddings and prompts.

    For each count ``N`` in ``prompt_counts``, three prompt kinds: ``N`` boxes, ``N`` sets of 3 clicks, and
    ``N`` boxes each with 2 clicks. Returns ``{"max_abs_diff_low_res_logits", "max_abs_diff_iou",
    "logit_scale", "cases"}`` (the scale: max |logit| of the torch outputs, to judge the differences by).
    """
    path = Path(path)
    info = json.loads(sidecar_path(path).read_text())
    multimask, spec = bool(info["multimask"]), loaded.spec
    session = onnx_session(path)
    generator = torch.Generator().manual_seed(seed)
    g, low, S = spec.embedding_size, spec.low_res_mask_size, spec.image_size
    worst_logits, worst_iou, scale, cases = 0.0, 0.0, 0.0, []
    for n in prompt_counts:
        embedding = torch.randn(1, spec.prompt_embed_dim, g, g, generator=generator)
        corners = torch.rand(n, 2, 2, generator=generator) * S
        boxes = torch.cat([corners.min(1).values, corners.max(1).values], 1)
        clicks = (torch.rand(n, 3, 2, generator=generator) * S, torch.randint(0, 2, (n, 3), generator=generator))
        two = (clicks[0][:, :2], clicks[1][:, :2])
        previous = torch.randn(n, 1, low, low, generator=generator) * 4
        for kind, prompts, mask in (("boxes", {"boxes": boxes}, None), ("points", {"points": clicks}, None),
                                    ("boxes+points", {"boxes": boxes, "points": two}, None),
                                    ("boxes+mask", {"boxes": boxes}, previous)):
            low_ref, iou_ref = decode_reference(loaded, adapter, embedding, multimask, mask_logits=mask, **prompts)
            coords, labels = onnx_prompt_arrays(**prompts)
            feeds = {"image_embeddings": embedding.numpy(), "point_coords": coords, "point_labels": labels,
                     "mask_input": np.zeros((1, 1, low, low), np.float32) if mask is None else mask.numpy(),
                     "has_mask_input": np.full(1, 0.0 if mask is None else 1.0, np.float32)}
            low_onnx, iou_onnx = session.run(["low_res_logits", "iou_predictions"], feeds)
            d_logits = float(np.abs(low_onnx - low_ref.numpy()).max())
            d_iou = float(np.abs(iou_onnx - iou_ref.numpy()).max())
            worst_logits, worst_iou = max(worst_logits, d_logits), max(worst_iou, d_iou)
            scale = max(scale, float(low_ref.abs().max()))
            cases.append({"prompts": n, "kind": kind, "max_abs_diff_low_res_logits": d_logits})
    return {"max_abs_diff_low_res_logits": worst_logits, "max_abs_diff_iou": worst_iou, "logit_scale": scale,
            "cases": cases}
