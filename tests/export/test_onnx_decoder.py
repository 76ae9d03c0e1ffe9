"""ONNX export of the prompt encoder + mask decoder (+ IPS): onnxruntime against the torch model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from samadapt.cli import app
from samadapt.export.onnx_decoder import (
    check_parity,
    export_decoder,
    export_source,
    onnx_prompt_arrays,
    onnx_session,
    sidecar_path,
)
from samadapt.models.decoder import SamDecoder, upscale_logits
from samadapt.models.registry import REGISTRY
from samadapt.models.sam import build_sam, load_sam, sam_digest, save_sam
from samadapt.promise.adapter import AdapterSpec, PromiseAdapter, save_adapter

pytest.importorskip("onnxruntime")
TOLERANCE = 1e-3  # fp32 kernels differ between torch and onnxruntime; logits reach tens


@pytest.fixture(scope="module")
def micro_checkpoint(tmp_path_factory) -> Path:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        spec = REGISTRY["test_micro"]
        return save_sam(build_sam(spec), spec, tmp_path_factory.mktemp("micro") / "run" / "model.pth")


def _adapter(loaded, checkpoint: Path) -> PromiseAdapter:
    """An IPS adapter whose (zero-initialised) output layer is randomised, so that the shift matters."""
    spec = loaded.spec
    adapter = PromiseAdapter(AdapterSpec(
        classes=("organ",), image_size=spec.image_size, feature_dim=spec.encoder_embed_dim, feature_levels=3,
        grid=spec.embedding_size, transformer_dim=spec.prompt_embed_dim, num_mask_tokens=4, has_apm=False,
        has_ips=True), base_model=str(checkpoint), base_digest=sam_digest(loaded.sam))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        torch.nn.init.normal_(adapter.ips.mlp[2].weight, std=0.5)
    return adapter.eval()


def test_tiny_decoder_matches_torch_for_any_number_of_prompts(tmp_path: Path):
    loaded = load_sam("tiny")
    path = tmp_path / "tiny.onnx"
    info = export_decoder(loaded, path, upscale=True)
    assert info["multimask"] is False and info["ips"] is False and json.loads(sidecar_path(path).read_text())
    parity = check_parity(path, loaded, prompt_counts=(1, 5, 64))
    assert len(parity["cases"]) == 12  # boxes, clicks, boxes + clicks, boxes + previous mask; each count
    assert parity["max_abs_diff_low_res_logits"] < TOLERANCE < parity["logit_scale"]
    assert parity["max_abs_diff_iou"] < TOLERANCE

    embedding = torch.randn(1, 128, 16, 16, generator=torch.Generator().manual_seed(3))
    boxes = torch.tensor([[10.0, 20.0, 90.0, 120.0], [100.0, 100.0, 200.0, 180.0]])
    coords, labels = onnx_prompt_arrays(boxes=boxes)
    low, iou, logits = onnx_session(path).run(None, {
        "image_embeddings": embedding.numpy(), "point_coords": coords, "point_labels": labels,
        "mask_input": np.zeros((1, 1, 64, 64), np.float32), "has_mask_input": np.zeros(1, np.float32)})
    with torch.inference_mode():
        low_ref, _ = SamDecoder(loaded.sam)(embedding, boxes=boxes)
    assert low.shape == (2, 1, 64, 64) and iou.shape == (2, 1) and logits.shape == (2, 1, 256, 256)
    assert np.abs(logits - upscale_logits(low_ref, 256).numpy()).max() < TOLERANCE


def test_ips_shift_is_inside_the_graph_and_multimask_follows_the_adapter(micro_checkpoint: Path, tmp_path: Path):
    loaded = load_sam(str(micro_checkpoint))
    adapter = _adapter(loaded, micro_checkpoint)
    path = tmp_path / "ips.onnx"
    info = export_decoder(loaded, path, adapter, verify_counts=(1, 9))
    assert info["ips"] and info["multimask"] and info["parity"]["max_abs_diff_low_res_logits"] < TOLERANCE
    unshifted = check_parity(path, loaded, adapter=None, prompt_counts=(3,))  # plain SAM is another model
    assert unshifted["max_abs_diff_low_res_logits"] > max(0.1 * unshifted["logit_scale"],
                                                          100 * info["parity"]["max_abs_diff_low_res_logits"])


def test_run_folders_resolve_to_their_model_or_adapter(micro_checkpoint: Path, tmp_path: Path):
    loaded, adapter = export_source(str(micro_checkpoint.parent))  # a train run folder: its model.pth
    assert adapter is None and loaded.checkpoint == micro_checkpoint
    adapt_run = tmp_path / "adapt"
    save_adapter(_adapter(loaded, micro_checkpoint), adapt_run / "adapter.pt")
    base, found = export_source(str(adapt_run))
    assert found is not None and found.has_ips and sam_digest(base.sam) == sam_digest(loaded.sam)

    runner = CliRunner()
    out = tmp_path / "exported" / "decoder.onnx"
    done = runner.invoke(app, ["export-onnx", str(adapt_run), "--out", str(out)])
    assert done.exit_code == 0, done.output
    sidecar = json.loads(sidecar_path(out).read_text())
    assert sidecar["ips"] and sidecar["parity"]["max_abs_diff_low_res_logits"] < TOLERANCE

    model_sidecar = micro_checkpoint.with_suffix(".json").read_bytes()  # exporting beside model.pth keeps model.json
    done = runner.invoke(app, ["export-onnx", str(micro_checkpoint.parent), "--out",
                               str(micro_checkpoint.with_suffix(".onnx")), "--no-verify"])
    assert done.exit_code == 0, done.output
    assert micro_checkpoint.with_suffix(".json").read_bytes() == model_sidecar
    assert not json.loads(sidecar_path(micro_checkpoint.with_suffix(".onnx")).read_text())["ips"]


def test_export_command_bad_input_exits_2(micro_checkpoint: Path, tmp_path: Path):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    folder = tmp_path / "folder"
    folder.mkdir()
    runner = CliRunner()
    cases = [
        (["export-onnx", str(tmp_path / "missing.pth")], "neither a checkpoint file"),
        (["export-onnx", str(corrupt)], "not a loadable"),
        (["export-onnx", str(folder)], "neither model.pth"),
        (["export-onnx", str(micro_checkpoint), "--out", str(folder)], "is a folder"),
        (["export-onnx", str(micro_checkpoint), "--opset", "9", "--out", str(tmp_path / "o.onnx")], "opset 13"),
        (["export-onnx", str(micro_checkpoint), "--adapter", str(folder)], "no adapter.pt"),
    ]
    for args, message in cases:
        done = runner.invoke(app, args)
        assert done.exit_code == 2 and message in done.output and "Traceback" not in done.output, args
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt.pth", "folder"]  # nothing half-written
