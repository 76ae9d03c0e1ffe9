"""Splits by patient: a subject pattern, a split file, the warning for cut subjects, and re-splitting in place."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from samadapt.cli import app
from samadapt.config import PrepareConfig
from samadapt.data.prepare import assign_splits, case_groups, cut_groups, prepare_dataset
from samadapt.errors import ConfigError, DatasetError


def _folder(root: Path, patients: int = 6, frames: int = 2) -> Path:
    """A 2D folder: ``patient<p>_<f>`` images, each with one square mask."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for p in range(patients):
        for f in range(frames):
            stem = f"patient{p:03d}_{f}"
            Image.fromarray(rng.integers(0, 255, (48, 48), dtype=np.uint8)).save(root / "images" / f"{stem}.png")
            mask = np.zeros((48, 48), np.uint8)
            mask[10 + f : 30, 12:32 + p] = 255
            Image.fromarray(mask).save(root / "masks" / f"{stem}_organ_000.png")
    return root


def _subjects_by_split(prepared) -> dict[str, set[str]]:
    return {split: {cid.split("_")[0] for cid in prepared.case_ids(split)} for split in ("train", "val", "test")}


def test_group_split_keeps_each_patient_in_one_split(tmp_path: Path):
    source = _folder(tmp_path / "raw")
    config = PrepareConfig(image_size=64, split_group=r"^(patient\d+)", split=(0.5, 0.25, 0.25))
    prepared = prepare_dataset(source, tmp_path / "prepared", config)
    subjects = _subjects_by_split(prepared)
    assert subjects["train"] and subjects["val"] and subjects["test"]
    assert not (subjects["train"] & subjects["val"]) and not (subjects["train"] & subjects["test"])
    assert not (subjects["val"] & subjects["test"])
    assert prepared.manifest["warnings"] == []


def test_random_case_split_that_cuts_patients_warns(tmp_path: Path):
    source = _folder(tmp_path / "raw")
    prepared = prepare_dataset(source, tmp_path / "prepared", PrepareConfig(image_size=64, split=(0.5, 0.25, 0.25)))
    subjects = _subjects_by_split(prepared)
    assert subjects["train"] & (subjects["val"] | subjects["test"])  # seed 0 cuts at least one patient
    assert any("subject(s) with cases in several splits" in w for w in prepared.manifest["warnings"])
    assert cut_groups({"a_1": "train", "a_2": "test", "b_1": "val", "b_2": "val"}) == ["a"]


def test_split_file_and_resplit_in_place_keep_the_cases(tmp_path: Path):
    source = _folder(tmp_path / "raw", patients=3)
    out = tmp_path / "prepared"
    first = prepare_dataset(source, out, PrepareConfig(image_size=64))
    shard = out / "cases" / "patient000_0" / "images.npy"
    written = shard.stat().st_mtime_ns
    split_file = tmp_path / "splits.json"
    split_file.write_text(json.dumps({"train": ["patient000"], "val": ["patient001"], "test": ["patient002"]}))
    result = CliRunner().invoke(app, ["prepare", str(source), str(out), "--image-size", "64", "--split-group",
                                      r"^(patient\d+)", "--split-file", str(split_file)])
    assert result.exit_code == 0, result.output
    assert "2 train, 2 val, 2 test" in result.output
    from samadapt.data.prepared import PreparedDataset

    again = PreparedDataset(out)
    assert again.case_ids("test") == ["patient002_0", "patient002_1"]
    assert again.hash != first.hash  # the split is part of the dataset's identity
    assert again.content_hash == first.content_hash != first.hash  # ... but not of its contents
    assert shard.stat().st_mtime_ns == written  # re-splitting rewrote the manifest, not the case shards


def test_a_resplit_keeps_the_embedding_cache(tmp_path: Path):
    """The cache is keyed by the cases' contents: after a re-split, the same cache opens and nothing is
    embedded again."""
    from samadapt.models.embedding_cache import compute_embeddings, open_cache
    from samadapt.models.sam import load_sam

    source = _folder(tmp_path / "raw", patients=3, frames=1)
    out = tmp_path / "prepared"
    loaded = load_sam("test_micro")
    prepared = prepare_dataset(source, out, PrepareConfig(image_size=64))
    before = {c: prepared.split_of(c) for c in prepared.case_ids()}
    first = compute_embeddings(prepared, loaded)
    split_file = tmp_path / "splits.json"
    split_file.write_text(json.dumps({s: [c for c, was in before.items() if was == t]
                                      for s, t in (("train", "test"), ("val", "train"), ("test", "val"))}))
    resplit = prepare_dataset(source, out, PrepareConfig(image_size=64, split_file=str(split_file)))
    assert {c: resplit.split_of(c) for c in resplit.case_ids()} != before
    reopened = open_cache(resplit, loaded)
    assert reopened.root == first.root
    stamp = (first.root / "cache.json").stat().st_mtime_ns
    again = compute_embeddings(resplit, loaded)  # finished: nothing to do
    assert again.root == first.root and (first.root / "cache.json").stat().st_mtime_ns == stamp


def test_split_settings_errors_are_one_line(tmp_path: Path):
    source = _folder(tmp_path / "raw", patients=2)
    with pytest.raises(ConfigError, match="does not match case 'patient000_0'"):
        case_groups(["patient000_0"], r"^subject(\d+)")
    incomplete = tmp_path / "splits.json"
    incomplete.write_text(json.dumps({"train": ["patient000_0", "patient000_1"], "test": ["patient001_0"]}))
    result = CliRunner().invoke(app, ["prepare", str(source), str(tmp_path / "p"), "--image-size", "64",
                                      "--split-file", str(incomplete)])
    assert result.exit_code == 2
    assert "in no split (e.g. 'patient001_1')" in result.output and "Traceback" not in result.output


def test_groups_share_a_split_whatever_the_seed():
    cases = [f"s{i}_{f}" for i in range(10) for f in range(3)]
    groups = {c: c.split("_")[0] for c in cases}
    for seed in range(5):
        splits = assign_splits(cases, (0.6, 0.2, 0.2), seed, groups)
        by_group: dict[str, set[str]] = {}
        for case, split in splits.items():
            by_group.setdefault(groups[case], set()).add(split)
        assert all(len(v) == 1 for v in by_group.values())
        counts = [sum(1 for v in by_group.values() if split in v) for split in ("train", "val", "test")]
        assert sorted(counts) == [2, 2, 6]


def test_2d_pixel_spacing_from_spacing_json_reaches_the_metrics_frame(tmp_path: Path):
    source = _folder(tmp_path / "raw", patients=2, frames=1)
    (source / "spacing.json").write_text(json.dumps({"default": 0.5, "patient001_0": [0.8, 0.6]}))
    prepared = prepare_dataset(source, tmp_path / "prepared", PrepareConfig(image_size=64))
    # 48 px images into the 64 px frame: a model-frame pixel covers 48/64 of a source pixel
    assert prepared.meta("patient000_0")["pixel_spacing_mm"] == pytest.approx([0.5 * 48 / 64] * 2)
    assert prepared.meta("patient001_0")["pixel_spacing_mm"] == pytest.approx([0.8 * 48 / 64, 0.6 * 48 / 64])
    assert prepared.meta("patient001_0")["spacing_known"] is True
    (source / "spacing.json").write_text(json.dumps({"patient000_0": 0.5}))
    with pytest.raises(DatasetError, match="no pixel size for image 'patient001_0'"):
        prepare_dataset(source, tmp_path / "prepared", PrepareConfig(image_size=64))
