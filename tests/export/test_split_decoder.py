"""The split decoder (per-image + per-prompt halves) computes SAM's decoder: in torch and in onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from samadapt.errors import ConfigError
from samadapt.export.onnx_decoder import _AdapterShift, decode_reference, onnx_prompt_arrays, onnx_session
from samadapt.export.split_decoder import (
    IMAGE_OUTPUTS,
    DecoderImagePart,
    DecoderPromptPart,
    check_splittable,
    export_image_part,
    export_prompt_part,
)
from samadapt.models.registry import REGISTRY
from samadapt.models.sam import LoadedModel, build_sam, load_sam, sam_digest
from samadapt.promise.adapter import AdapterSpec, PromiseAdapter

TOLERANCE = 1e-3  # float32, another summation order; logits reach tens


def _cases(loaded, n: int, seed: int):
    """(kind, prompts, previous mask or None) for ``n`` prompts: boxes, clicks with padding, boxes + clicks, mask."""
    spec = loaded.spec
    generator = torch.Generator().manual_seed(seed)
    corners = torch.rand(n, 2, 2, generator=generator) * spec.image_size
    boxes = torch.cat([corners.min(1).values, corners.max(1).values], 1)
    labels = torch.randint(0, 2, (n, 3), generator=generator)
    labels[:, -1] = -1  # a padding click
    clicks = (torch.rand(n, 3, 2, generator=generator) * spec.image_size, labels)
    previous = torch.randn(n, 1, spec.low_res_mask_size, spec.low_res_mask_size, generator=generator) * 4
    return [("boxes", {"boxes": boxes}, None), ("clicks", {"points": clicks}, None),
            ("boxes+clicks", {"boxes": boxes, "points": (clicks[0][:, :2], clicks[1][:, :2])}, None),
            ("boxes+mask", {"boxes": boxes}, previous)]


def _split_decode(image: nn.Module, prompt: nn.Module, loaded, embedding, prompts, mask):
    low = loaded.spec.low_res_mask_size
    coords, labels = onnx_prompt_arrays(**prompts)
    with torch.inference_mode():
        terms = image(embedding, torch.zeros(1, 1, low, low) if mask is None else mask,
                      torch.tensor([0.0 if mask is None else 1.0]))
        return prompt(*terms, torch.from_numpy(coords), torch.from_numpy(labels))


def _ips_adapter(loaded) -> PromiseAdapter:
    spec = loaded.spec
    adapter = PromiseAdapter(AdapterSpec(
        classes=("organ",), image_size=spec.image_size, feature_dim=spec.encoder_embed_dim, feature_levels=3,
        grid=spec.embedding_size, transformer_dim=spec.prompt_embed_dim, num_mask_tokens=4, has_apm=False,
        has_ips=True), base_model="test_micro", base_digest=sam_digest(loaded.sam))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        torch.nn.init.normal_(adapter.ips.mlp[2].weight, std=0.5)
    return adapter.eval()


@pytest.mark.parametrize("multimask", [False, True])
def test_split_halves_equal_sams_decoder_in_torch(multimask: bool):
    loaded = load_sam("tiny")
    image, prompt = DecoderImagePart(loaded.sam).eval(), DecoderPromptPart(loaded.sam, multimask).eval()
    spec = loaded.spec
    embedding = torch.randn(1, spec.prompt_embed_dim, spec.embedding_size, spec.embedding_size,
                            generator=torch.Generator().manual_seed(2))
    for n in (1, 4):
        for kind, prompts, mask in _cases(loaded, n, seed=n):
            low_ref, iou_ref = decode_reference(loaded, None, embedding, multimask, mask_logits=mask, **prompts)
            low, iou = _split_decode(image, prompt, loaded, embedding, prompts, mask)
            assert low.shape == low_ref.shape and iou.shape == iou_ref.shape, kind
            assert (low - low_ref).abs().max() < TOLERANCE < low_ref.abs().max(), kind
            assert (iou - iou_ref).abs().max() < TOLERANCE, kind


def test_the_ips_shift_is_in_the_image_half():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        spec = REGISTRY["test_micro"]
        loaded = LoadedModel(build_sam(spec).eval(), spec, None, {})
    adapter = _ips_adapter(loaded)
    image = DecoderImagePart(loaded.sam, _AdapterShift(adapter)).eval()
    prompt = DecoderPromptPart(loaded.sam, multimask=True).eval()
    embedding = torch.randn(1, spec.prompt_embed_dim, spec.embedding_size, spec.embedding_size)
    for kind, prompts, mask in _cases(loaded, 3, seed=5):
        low_ref, _ = decode_reference(loaded, adapter, embedding, True, mask_logits=mask, **prompts)
        unshifted, _ = decode_reference(loaded, None, embedding, True, mask_logits=mask, **prompts)
        low, _ = _split_decode(image, prompt, loaded, embedding, prompts, mask)
        assert (low - low_ref).abs().max() < TOLERANCE < (unshifted - low_ref).abs().max(), kind


def test_exported_halves_match_torch_in_onnxruntime(tmp_path: Path):
    pytest.importorskip("onnxruntime")
    loaded = load_sam("tiny")
    spec = loaded.spec
    image = onnx_session(export_image_part(loaded, tmp_path / "image.onnx"))
    prompts_single = onnx_session(export_prompt_part(loaded, tmp_path / "single.onnx"))
    prompts_multi = onnx_session(export_prompt_part(loaded, tmp_path / "multi.onnx", multimask=True))
    embedding = torch.randn(1, spec.prompt_embed_dim, spec.embedding_size, spec.embedding_size,
                            generator=torch.Generator().manual_seed(4))
    low = spec.low_res_mask_size
    for n in (1, 7):
        for kind, prompts, mask in _cases(loaded, n, seed=10 + n):
            terms = image.run(None, {
                "image_embeddings": embedding.numpy(),
                "mask_input": np.zeros((1, 1, low, low), np.float32) if mask is None else mask.numpy(),
                "has_mask_input": np.full(1, 0.0 if mask is None else 1.0, np.float32)})
            coords, labels = onnx_prompt_arrays(**prompts)
            for multimask, session in ((False, prompts_single), (True, prompts_multi)):
                feeds = {**dict(zip(IMAGE_OUTPUTS, terms, strict=True)), "point_coords": coords,
                         "point_labels": labels}
                low_onnx, iou_onnx = session.run(None, feeds)
                low_ref, iou_ref = decode_reference(loaded, None, embedding, multimask, mask_logits=mask, **prompts)
                assert low_onnx.shape == tuple(low_ref.shape), (kind, n, multimask)
                assert np.abs(low_onnx - low_ref.numpy()).max() < TOLERANCE, (kind, n, multimask)
                assert np.abs(iou_onnx - iou_ref.numpy()).max() < TOLERANCE, (kind, n, multimask)


def test_other_decoders_are_refused():
    loaded = load_sam("tiny")
    loaded.sam.mask_decoder.output_upscaling = nn.Sequential(nn.Upsample(scale_factor=4))
    with pytest.raises(ConfigError, match="plain graph"):
        check_splittable(loaded.sam)
