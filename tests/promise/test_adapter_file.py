"""Adapter files: a lossless round trip, the base model check, and one-line errors for bad files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from samadapt.errors import CheckpointError
from samadapt.models.registry import REGISTRY
from samadapt.models.sam import build_sam, load_sam, sam_digest, save_sam
from samadapt.promise import AdapterSpec, PromiseAdapter, check_base_model, load_adapter, load_base_model, save_adapter

SPEC = REGISTRY["test_micro"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory, micro_base) -> Path:
    loaded = load_sam(str(micro_base))
    spec = AdapterSpec(classes=("liver", "spleen"), image_size=64, feature_dim=32, feature_levels=3, grid=4,
                       transformer_dim=32, num_mask_tokens=4, has_apm=True, has_ips=True, apm_kind="cross_attention")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4)
        adapter = PromiseAdapter(spec, str(micro_base), sam_digest(loaded.sam))
        torch.nn.init.normal_(adapter.ips.mlp[2].weight, std=0.1)
    run = tmp_path_factory.mktemp("adapter_run")
    save_adapter(adapter, run / "adapter.pt", {"mode": "apm+ips"})
    return run


def test_round_trip_gives_the_same_outputs(saved, micro_base):
    first, second = load_adapter(saved), load_adapter(saved / "adapter.pt")
    assert first.base_model == str(micro_base) and first.classes == ["liver", "spleen"]
    assert first.has_apm and first.has_ips and first.spec.apm_kind == "cross_attention"
    g = torch.Generator().manual_seed(0)
    features, embedding = torch.randn((1, 3, 32, 4, 4), generator=g), torch.randn((1, 32, 4, 4), generator=g)
    for a, b in zip(first.auto_points(features, 1), second.auto_points(features, 1), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(first.token_shift(embedding), second.token_shift(embedding))
    assert torch.count_nonzero(first.token_shift(embedding)) > 0
    assert not first.training


def test_base_model_is_checked_by_its_weights(saved, micro_base, tmp_path):
    adapter = load_adapter(saved)
    base = load_base_model(adapter)
    assert base.checkpoint == micro_base and not any(p.requires_grad for p in base.sam.parameters())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(99)
        other = save_sam(build_sam(SPEC), SPEC, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not the SAM this adapter was trained on"):
        check_base_model(adapter, load_sam(str(other)))


def _copy(saved: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(saved, target)
    return target


def test_bad_files_raise_one_line_checkpoint_errors(saved, tmp_path):
    with pytest.raises(CheckpointError, match="no adapter.pt"):
        load_adapter(tmp_path)
    with pytest.raises(CheckpointError, match="no such adapter"):
        load_adapter(tmp_path / "missing.pt")
    run = _copy(saved, tmp_path)
    (run / "adapter.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="adapter.json: invalid JSON"):
        load_adapter(run)
    (run / "adapter.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="not a ProMISe adapter"):
        load_adapter(run)
    (run / "adapter.json").unlink()
    with pytest.raises(CheckpointError, match="adapter.json: missing"):
        load_adapter(run)


def test_weights_that_do_not_fit_or_do_not_load(saved, tmp_path):
    run = _copy(saved, tmp_path)
    info = json.loads((run / "adapter.json").read_text())
    info["architecture"]["num_points"] = 8
    (run / "adapter.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="do not fit the sidecar"):
        load_adapter(run)
    info["architecture"]["num_points"] = 16
    (run / "adapter.json").write_text(json.dumps(info))
    (run / "adapter.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a loadable"):
        load_adapter(run)
    del info["architecture"]["image_size"]
    (run / "adapter.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="architecture entry"):
        load_adapter(run)
