"""Embedding cache on a tiny real prepared dataset with the random ``test_micro`` SAM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from samadapt.cli import app
from samadapt.data.prepared import PreparedDataset
from samadapt.errors import CacheError, ConfigError
from samadapt.models.embedding_cache import (
    EmbeddingCache,
    bytes_per_slice,
    compute_embeddings,
    encoder_digest,
    open_cache,
)
from samadapt.models.preprocess import to_model_input
from samadapt.models.registry import REGISTRY
from samadapt.models.sam import LoadedModel, build_sam, load_sam, save_sam
from support import synthetic_prepared

SPEC = REGISTRY["test_micro"]  # 64 px input, 4x4 grid, C = D = 32, 2 blocks
# case id -> (slices, valid (h, w), RGB?)
CASES = {"c0": (5, (48, 64), False), "c1": (3, (64, 40), True)}


def _prepared(root: Path, seed: int = 0) -> PreparedDataset:
    return synthetic_prepared(root, SPEC.image_size, CASES, seed, "embedding_cache")


def _model(seed: int = 0) -> LoadedModel:
    torch.manual_seed(seed)
    return LoadedModel(build_sam(SPEC), SPEC, None, {})


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> PreparedDataset:
    return _prepared(tmp_path_factory.mktemp("prepared"))


def test_shapes_and_values_match_the_encoder(prepared: PreparedDataset, tmp_path: Path) -> None:
    loaded = _model()
    cache = compute_embeddings(prepared, loaded, out=tmp_path / "cache", batch_size=2, with_features=True)
    g, C, D = SPEC.embedding_size, SPEC.prompt_embed_dim, SPEC.encoder_embed_dim
    assert cache.has_features and sorted(cache.case_ids) == ["c0", "c1"]
    encoder = loaded.sam.image_encoder
    for cid, (n, hw, _) in CASES.items():
        emb, feats = cache.embeddings(cid), cache.features(cid)
        assert emb.shape == (n, C, g, g) and emb.dtype == np.float16 and isinstance(emb, np.memmap)
        assert feats.shape == (n, 3, D, g, g) and feats.dtype == np.float16
        x = to_model_input(np.array(prepared.images(cid)), SPEC, hw)
        with torch.no_grad():
            expected = encoder(x).numpy()
            tokens = encoder.patch_embed(x) + encoder.pos_embed  # manual forward through the blocks
            outputs = []
            for block in encoder.blocks:
                tokens = block(tokens)
                outputs.append(tokens.permute(0, 3, 1, 2).numpy())
        np.testing.assert_allclose(emb, expected, rtol=2e-3, atol=2e-3)
        for level, block_index in enumerate(SPEC.feature_block_indexes):
            np.testing.assert_allclose(feats[:, level], outputs[block_index], rtol=2e-3, atol=2e-3)
    sizes = bytes_per_slice(SPEC, with_features=True)
    assert cache.bytes_per_slice == sizes == {"embeddings": C * g * g * 2, "features": 3 * D * g * g * 2,
                                              "total": (C + 3 * D) * g * g * 2}
    on_disk = (tmp_path / "cache" / "c0.npy").stat().st_size
    assert 0 <= on_disk - 5 * sizes["embeddings"] <= 128  # payload plus the .npy header
    assert not list((tmp_path / "cache").glob("*.partial"))


def test_stale_cache_is_refused(prepared: PreparedDataset) -> None:
    loaded = _model()
    cache = compute_embeddings(prepared, loaded, batch_size=4)  # default location
    assert cache.root.parent == prepared.root / "embeddings" and len(cache.root.name) == 16
    assert open_cache(prepared, loaded).root == cache.root
    with pytest.raises(CacheError, match="without encoder features"):
        cache.features("c0")
    with pytest.raises(CacheError, match="no embedding cache"):
        open_cache(prepared, loaded, with_features=True)
    with torch.no_grad():
        loaded.sam.image_encoder.neck[0].weight[0, 0, 0, 0] += 1.0  # change one weight
    with pytest.raises(CacheError, match="no embedding cache"):
        open_cache(prepared, loaded)
    with pytest.raises(CacheError, match="another model or data; rerun `samadapt embed`"):
        open_cache(prepared, loaded, root=cache.root)
    with pytest.raises(CacheError, match="another model or data"):
        compute_embeddings(prepared, loaded, out=cache.root)


def test_other_data_and_image_size_are_refused(prepared: PreparedDataset, tmp_path: Path) -> None:
    loaded = _model()
    cache = compute_embeddings(prepared, loaded, out=tmp_path / "cache", batch_size=8)
    other = _prepared(tmp_path / "other", seed=1)  # same layout, other pixels -> other hash
    with pytest.raises(CacheError, match="another model or data"):
        open_cache(other, loaded, root=cache.root)
    tiny = LoadedModel(build_sam(REGISTRY["tiny"]), REGISTRY["tiny"], None, {})
    with pytest.raises(ConfigError, match="prepared at 64 px"):
        compute_embeddings(prepared, tiny, out=tmp_path / "tiny")
    with pytest.raises(ConfigError, match="no CUDA GPU|not a torch device"):
        compute_embeddings(prepared, loaded, out=tmp_path / "gpu", device="cuda:7" if not
                           torch.cuda.is_available() else "nonsense")


def test_features_cache_serves_plain_requests(prepared: PreparedDataset, tmp_path: Path) -> None:
    root = _prepared(tmp_path / "p").root
    data = PreparedDataset(root)
    loaded = _model()
    with_feats = compute_embeddings(data, loaded, with_features=True, batch_size=8)
    assert open_cache(data, loaded).root == with_feats.root
    assert open_cache(data, loaded, with_features=True).has_features


def test_resume_mid_case_is_byte_identical(prepared: PreparedDataset, tmp_path: Path) -> None:
    loaded = _model()
    whole = compute_embeddings(prepared, loaded, out=tmp_path / "whole", batch_size=2, with_features=True)

    calls: list[tuple[int, int]] = []

    def interrupt_after_4_batches(done: int, total: int) -> None:
        calls.append((done, total))
        if len(calls) == 5:  # the first call reports the start; c0 takes 3 batches, then one of c1
            raise KeyboardInterrupt

    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        compute_embeddings(prepared, loaded, out=out, batch_size=2, with_features=True,
                           progress=interrupt_after_4_batches)
    state = EmbeddingCache(out).info["cases"]
    assert state["c0"]["complete"] and state["c1"] == {"n_slices": 3, "done_slices": 2, "complete": False}
    assert (out / "c1.npy.partial").is_file() and (out / "c1.features.npy.partial").is_file()
    with pytest.raises(CacheError, match="incomplete"):
        open_cache(prepared, loaded, root=out)

    resumed: list[tuple[int, int]] = []
    compute_embeddings(prepared, loaded, out=out, batch_size=2, with_features=True,
                       progress=lambda d, t: resumed.append((d, t)))
    assert resumed == [(7, 8), (8, 8)]  # continued with the last batch of c1 only
    cache = open_cache(prepared, loaded, with_features=True, root=out)
    for cid in CASES:
        for name in (f"{cid}.npy", f"{cid}.features.npy"):
            assert (out / name).read_bytes() == (whole.root / name).read_bytes()
    assert not list(out.glob("*.partial")) and cache.is_complete(prepared.case_ids())


def test_digest_survives_save_and_load(tmp_path: Path) -> None:
    loaded = _model(seed=3)
    path = save_sam(loaded.sam, SPEC, tmp_path / "micro.pth")
    assert encoder_digest(load_sam(str(path))) == encoder_digest(loaded)


def test_embed_command(prepared: PreparedDataset, tmp_path: Path) -> None:
    path = save_sam(_model(seed=5).sam, SPEC, tmp_path / "micro.pth")
    runner = CliRunner()
    out = tmp_path / "cli_cache"
    result = runner.invoke(app, ["embed", str(prepared.root), "--model", str(path), "--batch-size", "3",
                                 "--features", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert str(out) in result.stdout
    assert EmbeddingCache(out).has_features and EmbeddingCache(out).embeddings("c1").shape[0] == 3
    missing = runner.invoke(app, ["embed", str(tmp_path / "nowhere"), "--model", str(path)])
    assert missing.exit_code == 2
    assert missing.stderr.startswith("samadapt: error: ") and missing.stderr.count("\n") == 1
    stale = runner.invoke(app, ["embed", str(prepared.root), "--model", str(path), "--no-features",
                                "--out", str(out)])
    assert stale.exit_code == 2 and "another model or data" in stale.stderr
