"""`samadapt embed` across torchrun ranks: cases split without loss or duplication, merged byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from samadapt.config import PrepareConfig
from samadapt.data.phantoms import write_phantom_dataset
from samadapt.data.prepare import prepare_dataset
from samadapt.models.cache_shards import assign_cases, fold_shard_progress, shard_progress_path
from samadapt.models.embedding_cache import CACHE_FILE, EmbeddingCache, compute_embeddings, open_cache
from samadapt.models.registry import REGISTRY
from samadapt.models.sam import build_sam, load_sam, save_sam
from support import torchrun


def test_assignment_covers_every_case_once_and_balances_the_work():
    remaining = {"a": 10, "b": 0, "c": 7, "d": 3, "e": 3, "f": 1}
    shards = assign_cases(remaining, 3)
    assert sorted(sum(shards, [])) == sorted(remaining)
    assert all(shard == sorted(shard) for shard in shards)  # each rank works in case order
    loads = [sum(remaining[c] for c in shard) for shard in shards]
    assert max(loads) == 10 and sorted(loads) == [7, 7, 10]
    assert assign_cases(remaining, 1) == [list(remaining)]
    assert assign_cases({"a": 5}, 4) == [["a"], [], [], []]


def test_folding_keeps_the_most_advanced_record_and_skips_foreign_files(tmp_path: Path):
    info = {"signature": "s", "cases": {"a": {"n_slices": 4, "done_slices": 2, "complete": False},
                                        "b": {"n_slices": 3, "done_slices": 3, "complete": True}}}
    records = {0: {"a": {"n_slices": 4, "done_slices": 3, "complete": False}},
               1: {"c": {"n_slices": 2, "done_slices": 1, "complete": False},
                   "b": {"n_slices": 3, "done_slices": 1, "complete": False}}}
    for rank, cases in records.items():
        shard_progress_path(tmp_path, rank).write_text(json.dumps({"signature": "s", "cases": cases}))
    shard_progress_path(tmp_path, 2).write_text(json.dumps({"signature": "other", "cases": {"d": {}}}))
    shard_progress_path(tmp_path, 3).write_text("{not json")
    found = fold_shard_progress(tmp_path, info, ["c", "b", "a"])
    assert len(found) == 4
    assert info["cases"]["a"]["done_slices"] == 3 and info["cases"]["b"]["complete"]  # never moves back
    assert list(info["cases"]) == ["a", "b", "c"] and "d" not in info["cases"]


@pytest.fixture(scope="module")
def phantom_set(tmp_path_factory) -> tuple:
    """5 tiny phantom cases prepared at 64 px and a seeded random ``test_micro`` checkpoint."""
    root = tmp_path_factory.mktemp("shards")
    source = write_phantom_dataset(root / "raw", n_cases=5, seed=1, size=(8, 64, 64), spacing=(5.0, 5.0, 8.0))
    prepared = prepare_dataset(source, root / "prepared", PrepareConfig(image_size=64, keep_empty_ratio=1.0))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        spec = REGISTRY["test_micro"]
        checkpoint = save_sam(build_sam(spec), spec, root / "micro.pth")
    return prepared, checkpoint


def test_torchrun_two_ranks_finish_an_interrupted_cache_byte_identical(phantom_set, tmp_path: Path):
    prepared, checkpoint = phantom_set
    loaded = load_sam(str(checkpoint))
    whole = compute_embeddings(prepared, loaded, out=tmp_path / "whole", batch_size=3, with_features=True)

    calls: list[int] = []

    def stop_after_4_batches(done: int, total: int) -> None:
        calls.append(done)
        if len(calls) == 5:
            raise KeyboardInterrupt

    out = tmp_path / "ddp"
    with pytest.raises(KeyboardInterrupt):  # one process stops mid-case; two ranks finish it
        compute_embeddings(prepared, loaded, out=out, batch_size=3, with_features=True,
                           progress=stop_after_4_batches)
    assert list(out.glob("*.partial"))
    done = torchrun("embed", str(prepared.root), "--model", str(checkpoint), "--out", str(out), "--batch-size", "3",
                    "--features")
    assert done.stdout.count("wrote embeddings of 5 cases") == 1  # rank 0 alone reports

    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(p.name for p in whole.root.iterdir())  # no rank files or partials left
    for name in files:
        assert (out / name).read_bytes() == (whole.root / name).read_bytes(), name
    assert json.loads((out / CACHE_FILE).read_text()) == whole.info
    assert open_cache(prepared, loaded, with_features=True, root=out).is_complete(prepared.case_ids())
    assert EmbeddingCache(out).case_ids == prepared.case_ids()
