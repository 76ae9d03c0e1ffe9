"""Every stage of the pipeline on a TinyViT-family foundation (LiteMedSAM's layout, micro-sized, random weights).

prepare -> embed (with features, onnxruntime encoder) -> train (multi-prompt, PHPG, PHPG + CBDP) -> adapt
(ProMISe) -> eval (boxes, automatic) -> segment -> export-onnx -> serve with the ONNX decoder. The checks are
that each stage runs on the 64x64-grid family end to end and writes what it promises; the methods' accuracy
is measured on real data by ``benchmarks/real_foundations.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from samadapt.cli import app
from samadapt.config import PrepareConfig
from samadapt.data.phantoms import generate_phantom, write_phantom_dataset
from samadapt.data.prepare import prepare_dataset
from samadapt.io.volume import write_volume
from samadapt.models.registry import REGISTRY
from samadapt.models.sam import build_sam, load_sam, save_sam

SPEC = REGISTRY["test_micro_tinyvit"]
SHORT = ["--set", "engine.steps=2", "--set", "engine.batch_size=2", "--set", "engine.eval_every=2",
         "--set", "engine.checkpoint_every=2", "--set", "engine.warmup_steps=0"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict:
    """A micro TinyViT checkpoint and 3 phantom cases prepared at its 64 px frame, embedded with features."""
    root = tmp_path_factory.mktemp("tinyvit_pipeline")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        base = save_sam(build_sam(SPEC), SPEC, root / "base" / "micro.pth")
    source = write_phantom_dataset(root / "raw", n_cases=3, seed=4, size=(6, 64, 64), spacing=(5.0, 5.0, 8.0))
    prepared = prepare_dataset(source, root / "prepared", PrepareConfig(image_size=64, keep_empty_ratio=1.0,
                                                                          split=(0.34, 0.33, 0.33)))
    env = {"SAMADAPT_CACHE": str(root / "cache")}
    done = CliRunner().invoke(app, ["embed", str(prepared.root), "--model", str(base), "--features",
                                    "--encoder-runtime", "onnx"], env=env)
    assert done.exit_code == 0, done.output
    assert list((root / "cache" / "onnx").glob("encoder-*.onnx"))  # the onnxruntime encoder was exported
    return {"root": root, "base": base, "prepared": prepared, "env": env}


@pytest.mark.parametrize("objective", [[], ["--set", "objective=phpg"],
                                       ["--set", "objective=phpg", "--set", "pruning.policy=class"]],
                         ids=["multi_prompt", "phpg", "phpg_cbdp"])
def test_train_every_objective_and_evaluate(workspace, objective, tmp_path: Path):
    run = tmp_path / "run"
    done = CliRunner().invoke(app, ["train", str(workspace["prepared"].root), "--out", str(run),
                                    "--set", f"model={workspace['base']}", *SHORT, *objective], env=workspace["env"])
    assert done.exit_code == 0, done.output
    trained = load_sam(str(run / "model.pth"))
    assert trained.spec.encoder == "tiny_vit"
    before = load_sam(str(workspace["base"])).sam.mask_decoder.state_dict()
    after = trained.sam.mask_decoder.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the decoder was trained
    report = tmp_path / "eval"
    done = CliRunner().invoke(app, ["eval", str(workspace["prepared"].root), "--model", str(workspace["base"]),
                                    "--model", str(run / "model.pth"), "--out", str(report), "--jitter", "0"],
                              env=workspace["env"])
    assert done.exit_code == 0, done.output
    assert (report / "summary.md").is_file()


def test_adapt_then_segment_without_prompts(workspace, tmp_path: Path):
    run = tmp_path / "adapt"
    prepared = workspace["prepared"]
    done = CliRunner().invoke(app, ["adapt", str(prepared.root), "--out", str(run),
                                    "--set", f"model={workspace['base']}", *SHORT], env=workspace["env"])
    assert done.exit_code == 0, done.output
    assert (run / "adapter.pt").is_file()
    done = CliRunner().invoke(app, ["eval", str(prepared.root), "--prompts", "auto", "--adapter", str(run),
                                    "--out", str(tmp_path / "auto")], env=workspace["env"])
    assert done.exit_code == 0, done.output

    case = generate_phantom(np.random.default_rng([5, 0]), size=(4, 48, 48), spacing=(5.0, 5.0, 8.0))
    volume = tmp_path / "in" / "case.nii.gz"
    volume.parent.mkdir()
    write_volume(case.image, case.geometry, volume)
    out = tmp_path / "out"
    done = CliRunner().invoke(app, ["segment", str(volume.parent), "--auto", "--adapter", str(run),
                                    "--out", str(out)], env=workspace["env"])
    assert done.exit_code == 0, done.output
    assert (out / "case.nii.gz").is_file()
    sidecar = json.loads((out / "case.json").read_text())
    assert sidecar  # the sidecar records how the labels were made


def test_export_onnx_decoder_parity(workspace, tmp_path: Path):
    out = tmp_path / "decoder.onnx"
    done = CliRunner().invoke(app, ["export-onnx", str(workspace["base"]), "--out", str(out)], env=workspace["env"])
    assert done.exit_code == 0, done.output
    info = json.loads(Path(f"{out}.json").read_text())
    assert info["embedding_shape"] == [1, SPEC.prompt_embed_dim, 16, 16]
    # float32 decoder, logits of magnitude ~10: differences of 1e-3 are reordering noise, a wrong graph is O(1)
    assert info["parity"]["max_abs_diff_low_res_logits"] < 1e-3 * max(1.0, info["parity"]["logit_scale"])


def test_serve_with_onnx_decoder_and_encoder(workspace, tmp_path: Path, monkeypatch):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from samadapt.inference.segmenter import Segmenter
    from samadapt.serve.app import create_app
    from samadapt.serve.sessions import ServeSettings

    monkeypatch.setenv("SAMADAPT_CACHE", workspace["env"]["SAMADAPT_CACHE"])
    case = generate_phantom(np.random.default_rng([5, 1]), size=(4, 48, 48), spacing=(5.0, 5.0, 8.0))
    data = tmp_path / "data"
    data.mkdir()
    write_volume(case.image, case.geometry, data / "scan.nii.gz")
    segmenter = Segmenter.from_model(str(workspace["base"]), encoder_runtime="onnx")
    assert segmenter.loaded.onnx_encoder is not None
    web = create_app(segmenter.loaded, ServeSettings(data_dir=data, decoder="onnx"), allowed_hosts=["testserver"])
    with TestClient(web) as client:
        opened = client.post("/api/volumes", json={"path": "scan.nii.gz"})
        assert opened.status_code == 200, opened.text
        sid = opened.json()["id"]
        first = client.post(f"/api/volumes/{sid}/predict", json={"slice": 2, "box": [5, 5, 30, 30]})
        assert first.status_code == 200, first.text
        click = {"slice": 2, "box": [5, 5, 30, 30], "points": [[12, 12]], "labels": [1]}
        again = client.post(f"/api/volumes/{sid}/predict", json=click).json()
        assert first.json()["embedded_now"] and not again["embedded_now"]
