"""Synthetic abdominal CT phantoms: determinism, labels, densities, the written dataset and the command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from typer.testing import CliRunner

from samadapt.cli import app
from samadapt.data.phantoms import (
    DEFAULT_SPACING,
    IDENTITY_DIRECTION,
    PHANTOM_HU_RANGES,
    PHANTOM_LABELS,
    PHANTOM_REGIONS_CLASS_ORDER,
    PhantomCase,
    generate_phantom,
    write_phantom_dataset,
)
from samadapt.errors import ConfigError
from samadapt.io.volume import read_volume

# The same 400 x 400 x 200 mm field of view as the default grid, 8x fewer voxels: the same patients.
COARSE = {"size": (20, 80, 80), "spacing": (5.0, 5.0, 10.0)}
TINY = {"size": (8, 32, 32), "spacing": (12.5, 12.5, 25.0)}
ORGANS = {"liver": 1, "spleen": 2, "kidney_right": 3, "kidney_left": 4, "stomach": 5, "pancreas": 6,
          "aorta": 7, "ivc": 8, "gallbladder": 9}
LESION_IN_ORGAN = {10: 1, 11: 3, 12: 4, 13: 6}  # raw lesion value -> raw value of the organ around it


def _case(seed: int, index: int, **grid) -> PhantomCase:
    return generate_phantom(np.random.default_rng([seed, index]), **grid)


@pytest.fixture(scope="module")
def coarse_cases() -> list[PhantomCase]:
    return [_case(0, i, **COARSE) for i in range(5)]


@pytest.fixture(scope="module")
def default_cases() -> list[PhantomCase]:
    return [_case(0, i) for i in range(2)]


def _region(label: np.ndarray, name: str) -> np.ndarray:
    values = PHANTOM_LABELS[name]
    return np.isin(label, values if isinstance(values, list) else [values])


def test_same_seed_and_index_give_bit_identical_cases() -> None:
    a, b = _case(0, 1, **COARSE), _case(0, 1, **COARSE)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label) and a.origin == b.origin
    other_seed, other_case = _case(1, 1, **COARSE), _case(0, 2, **COARSE)
    for other in (other_seed, other_case):
        assert not np.array_equal(a.image, other.image)
        assert np.mean(a.label != other.label) > 0.01  # a different patient, not just different noise


def test_array_format_and_grid(default_cases: list[PhantomCase]) -> None:
    case = default_cases[0]
    assert case.image.shape == case.label.shape == (40, 160, 160)
    assert case.image.dtype == np.int16 and case.label.dtype == np.uint8
    assert case.spacing == DEFAULT_SPACING and case.origin != (0.0, 0.0, 0.0)
    assert case.image.min() >= -1024 and case.image.max() <= 3071
    assert case.image.max() > 500  # bone
    corner = case.image[:, :8, :8].astype(float)  # air outside the patient: -1000 plus scanner noise
    assert -1010 < corner.mean() < -985 and 5 < corner.std() < 25
    assert set(np.unique(case.label)) <= set(range(14))


def test_every_class_appears_across_a_few_cases(coarse_cases: list[PhantomCase]) -> None:
    seen = set().union(*(np.unique(case.label).tolist() for case in coarse_cases))
    assert seen == set(range(14))
    for case in coarse_cases:  # every case has all nine organs except, sometimes, the gallbladder
        present = set(np.unique(case.label).tolist())
        assert set(ORGANS.values()) - {9} <= present


def test_a_coarser_grid_shows_the_same_patient(coarse_cases: list[PhantomCase],
                                               default_cases: list[PhantomCase]) -> None:
    fine, coarse = default_cases[0], coarse_cases[0]
    for value in (1, 2, 3, 4, 7):  # liver, spleen, kidneys, aorta: volumes in mm^3 agree
        v_fine = (fine.label == value).sum() * np.prod(fine.spacing)
        v_coarse = (coarse.label == value).sum() * np.prod(coarse.spacing)
        assert abs(v_fine - v_coarse) < 0.15 * v_fine, value


def test_organs_vary_between_cases(coarse_cases: list[PhantomCase]) -> None:
    names = ("liver", "spleen", "kidney_right", "pancreas")
    volumes = np.array([[_region(c.label, name).sum() for name in names] for c in coarse_cases], float)
    assert (volumes.std(axis=0) / volumes.mean(axis=0) > 0.05).all()


def test_lesions_lie_in_their_organ_and_are_rare(coarse_cases: list[PhantomCase],
                                                 default_cases: list[PhantomCase]) -> None:
    lesion_voxels = organ_voxels = 0
    for case in coarse_cases + default_cases:
        label = case.label
        for lesion, organ in LESION_IN_ORGAN.items():
            components, n = ndimage.label(label == lesion)
            for k in range(1, n + 1):
                around = ndimage.binary_dilation(components == k, iterations=1)
                assert (label[around] == organ).any(), f"lesion {lesion} component {k} floats outside organ {organ}"
        # region semantics: each lesion class lies inside its organ class
        assert not (_region(label, "liver_lesion") & ~_region(label, "liver")).any()
        assert not (_region(label, "pancreas_lesion") & ~_region(label, "pancreas")).any()
        kidneys = _region(label, "kidney_right") | _region(label, "kidney_left")
        assert not (_region(label, "kidney_lesion") & ~kidneys).any()
        assert not (_region(label, "kidney_right") & _region(label, "kidney_left")).any()
        lesion_voxels += np.isin(label, list(LESION_IN_ORGAN)).sum()
        organ_voxels += np.isin(label, list(ORGANS.values())).sum()
    assert 0 < lesion_voxels < 0.05 * organ_voxels


def test_small_structures_are_rare(default_cases: list[PhantomCase]) -> None:
    for case in default_cases:
        slices = {name: int(_region(case.label, name).any(axis=(1, 2)).sum()) for name in ("liver", "pancreas")}
        voxels = {name: int(_region(case.label, name).sum()) for name in ("liver", "pancreas", "gallbladder")}
        assert slices["pancreas"] < slices["liver"]
        assert voxels["pancreas"] < 0.1 * voxels["liver"] and voxels["gallbladder"] < 0.1 * voxels["liver"]
        assert np.isin(case.label, list(ORGANS.values())).mean() < 0.3  # background dominates


def test_organ_densities_are_plausible(default_cases: list[PhantomCase]) -> None:
    for case in default_cases:
        for name, value in ORGANS.items():
            mask = case.label == value
            if name == "gallbladder" and not mask.any():
                continue
            lo, hi = PHANTOM_HU_RANGES[name]
            assert lo <= case.image[mask].mean() <= hi, name
        mean = {name: case.image[case.label == v].mean() for name, v in ORGANS.items() if (case.label == v).any()}
        # contrast order of a portal-venous scan
        assert mean["aorta"] > mean["liver"] > mean.get("gallbladder", -100) + 50
        assert mean["kidney_left"] > mean["pancreas"] - 10


def test_neighbouring_organs_have_near_identical_density(default_cases: list[PhantomCase]) -> None:
    def core_mean(case: PhantomCase, value: int) -> float:  # away from edges: partial volume aside
        return float(case.image[ndimage.binary_erosion(case.label == value, iterations=1)].mean())

    for case in default_cases:
        liver_spleen = abs(core_mean(case, 1) - core_mean(case, 2))
        aorta_ivc = abs(core_mean(case, 7) - core_mean(case, 8))
        assert liver_spleen < 25 and aorta_ivc < 40
        assert min(liver_spleen, aorta_ivc) < 20
        # the pancreas is as dense as unlabelled soft tissue (collapsed bowel) in the same slices
        pancreas = case.label == 6
        rows = pancreas.any(axis=(1, 2))
        background = (case.label[rows] == 0) & (np.abs(case.image[rows] - core_mean(case, 6)) < 15)
        assert background.sum() > pancreas.sum()


def test_written_dataset_reads_back_with_its_geometry(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    out = write_phantom_dataset(tmp_path / "ds", n_cases=2, seed=3, progress=lambda *a: calls.append(a), **COARSE)
    assert calls == [(1, 2), (2, 2)]
    for index in range(2):
        expected = _case(3, index, **COARSE)
        image = read_volume(out / "imagesTr" / f"phantom_{index:03d}_0000.nii.gz")
        label = read_volume(out / "labelsTr" / f"phantom_{index:03d}.nii.gz")
        assert image.array.dtype == np.int16 and label.array.dtype == np.uint8
        assert np.array_equal(image.array, expected.image) and np.array_equal(label.array, expected.label)
        for volume in (image, label):
            g = volume.geometry
            assert g.size == (80, 80, 20)
            assert np.allclose(g.spacing, COARSE["spacing"]) and np.allclose(g.origin, expected.origin)
            assert np.allclose(g.direction, IDENTITY_DIRECTION)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["labels"] == PHANTOM_LABELS and meta["labels"]["background"] == 0
    assert meta["regions_class_order"] == PHANTOM_REGIONS_CLASS_ORDER
    assert len(PHANTOM_REGIONS_CLASS_ORDER) == len(PHANTOM_LABELS) - 1
    assert meta["channel_names"] == {"0": "CT"} and meta["file_ending"] == ".nii.gz"
    assert meta["numTraining"] == 2
    assert meta["generator"]["seed"] == 3 and meta["generator"]["size_zyx"] == [20, 80, 80]
    assert meta["generator"]["spacing_xyz"] == [5.0, 5.0, 10.0]


def test_resume_keeps_complete_cases_and_redoes_missing_ones(tmp_path: Path) -> None:
    out = write_phantom_dataset(tmp_path / "ds", n_cases=3, seed=0, **TINY)
    kept = out / "imagesTr" / "phantom_000_0000.nii.gz"
    kept_stat = kept.stat()
    lost_label = out / "labelsTr" / "phantom_001.nii.gz"
    original = read_volume(lost_label).array
    lost_label.unlink()
    (out / "dataset.json").unlink()  # as if the run had been killed before finishing
    write_phantom_dataset(out, n_cases=4, seed=0, **TINY)  # resume and extend
    assert kept.stat().st_mtime_ns == kept_stat.st_mtime_ns and kept.stat().st_ino == kept_stat.st_ino
    assert np.array_equal(read_volume(lost_label).array, original)
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 4
    assert len(list((out / "imagesTr").glob("*.nii.gz"))) == len(list((out / "labelsTr").glob("*.nii.gz"))) == 4
    # 4 cases written in one go are the same files' contents
    fresh = write_phantom_dataset(tmp_path / "fresh", n_cases=4, seed=0, **TINY)
    for name in ("imagesTr/phantom_003_0000.nii.gz", "labelsTr/phantom_001.nii.gz"):
        assert np.array_equal(read_volume(out / name).array, read_volume(fresh / name).array)


def test_refuses_folders_that_are_not_the_same_phantom_dataset(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="foreign"):
        write_phantom_dataset(foreign, n_cases=1, **TINY)
    out = write_phantom_dataset(tmp_path / "ds", n_cases=2, seed=0, **TINY)
    with pytest.raises(ConfigError, match="seed"):
        write_phantom_dataset(out, n_cases=2, seed=1, **TINY)
    with pytest.raises(ConfigError, match="at least 2"):
        write_phantom_dataset(out, n_cases=1, seed=0, **TINY)
    with pytest.raises(ConfigError, match="size"):
        write_phantom_dataset(tmp_path / "bad", n_cases=1, size=(0, 32, 32))
    with pytest.raises(ConfigError, match="spacing"):
        write_phantom_dataset(tmp_path / "bad", n_cases=1, spacing=(1.0, -1.0, 1.0))
    assert not (tmp_path / "bad").exists()


def test_phantoms_command(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cli"
    result = runner.invoke(app, ["phantoms", str(out), "--cases", "2", "--seed", "4", "--size", "8,32,32",
                                 "--spacing", "12.5,12.5,25"])
    assert result.exit_code == 0, result.output
    assert str(out) in result.stdout
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 2
    assert read_volume(out / "labelsTr" / "phantom_001.nii.gz").geometry.size == (32, 32, 8)
    for bad in (["--size", "40,160"], ["--size", "40,x,160"], ["--size", "0,160,160"], ["--spacing", "2.5,2.5"]):
        failed = runner.invoke(app, ["phantoms", str(tmp_path / "bad"), "--cases", "1", *bad])
        assert failed.exit_code == 2, failed.output
        assert failed.stderr.startswith("samadapt: error: ") and failed.stderr.count("\n") == 1
        assert bad[0] in failed.stderr or "size" in failed.stderr or "spacing" in failed.stderr
