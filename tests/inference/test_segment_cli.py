"""``samadapt segment``: label volumes on the input's exact grid, JSON sidecars, resume, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
from typer.testing import CliRunner

from samadapt.cli import app
from samadapt.data.phantoms import generate_phantom
from samadapt.io.volume import Geometry, read_volume, write_volume

SIZE, SPACING = (8, 40, 40), (10.0, 10.0, 24.0)


def _case(seed: int) -> tuple[np.ndarray, np.ndarray, Geometry]:
    case = generate_phantom(np.random.default_rng([3, seed]), size=SIZE, spacing=SPACING)
    return case.image, case.label, case.geometry


@pytest.fixture(scope="module")
def cases(tmp_path_factory, voxel_box) -> tuple[Path, dict]:
    """A folder with a NIfTI case, an nnU-Net-named NIfTI case and an oblique NRRD; and each one's boxes."""
    root = tmp_path_factory.mktemp("segment_in")
    boxes = {}
    for seed, name in ((0, "alpha.nii.gz"), (1, "beta_0000.nii.gz"), (2, "gamma.nrrd")):
        image, label, geometry = _case(seed)
        if name.endswith(".nrrd"):  # an oblique grid with spacings that float32 cannot hold exactly
            direction = sitk.VersorTransform((0.1, 0.2, 0.95), 0.3).GetMatrix()
            geometry = Geometry(geometry.size, (10.000000123, 9.99999, 24.0000001), (-201.123456789, -190.5, 17.25),
                                tuple(direction))
        write_volume(image, geometry, root / name)
        boxes[name.split(".")[0].removesuffix("_0000")] = {
            "liver": voxel_box(np.isin(label, (1, 10))), "spleen": voxel_box(label == 2)}
    return root, boxes


def _prompts(boxes: dict, coordinates: str = "voxel", **extra) -> dict:
    return {"coordinates": coordinates, **extra, "cases": {
        case: [{"class": "liver", "box": b["liver"]}, {"class": "spleen", "box": b["spleen"], "propagate": True}]
        for case, b in boxes.items()}}


@pytest.fixture(scope="module")
def run(micro_run):
    """``run(*args)``: ``samadapt segment ARGS`` with a fixed random micro model (a run folder)."""
    return lambda *args: CliRunner().invoke(app, ["segment", *args, "--model", str(micro_run)])


def test_segment_writes_labels_on_the_exact_grid_and_resumes(cases, run, tmp_path: Path):
    source, boxes = cases
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(_prompts(boxes)))
    out = tmp_path / "out"
    result = run(str(source), "--boxes", str(prompts), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "alpha.json", "alpha.nii.gz", "beta.json", "beta.nii.gz", "gamma.json", "gamma.nii.gz"]
    for case, source_name in (("alpha", "alpha.nii.gz"), ("beta", "beta_0000.nii.gz"), ("gamma", "gamma.nrrd")):
        written, original = read_volume(out / f"{case}.nii.gz"), read_volume(source / source_name)
        assert written.geometry.size == original.geometry.size
        if source_name.endswith(".nii.gz"):  # NIfTI in, NIfTI out: the geometry comes back bit for bit
            assert written.geometry == original.geometry
        else:  # NIfTI keeps float32: the NRRD's float64 geometry to float32 precision
            for field in ("spacing", "origin", "direction"):
                np.testing.assert_allclose(getattr(written.geometry, field), getattr(original.geometry, field),
                                           rtol=1e-6, atol=1e-5)
        sidecar = json.loads((out / f"{case}.json").read_text())
        assert sidecar["labels"] == {"background": 0, "liver": 1, "spleen": 2} and sidecar["mode"] == "boxes"
        z0, z1 = boxes[case]["liver"][2], boxes[case]["liver"][5]
        assert set(np.unique(written.array)) <= {0, 1, 2} and written.array.dtype == np.uint8
        assert not written.array[:z0].any() and not written.array[z1 + 1 :].any() or z0 == 0

    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = run(str(source), "--boxes", str(prompts), "--out", str(out))
    assert again.exit_code == 0 and "3 already done" in again.output
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps

    changed = _prompts(boxes)
    changed["cases"]["beta"] = changed["cases"]["beta"][:1]
    prompts.write_text(json.dumps(changed))
    third = run(str(source), "--boxes", str(prompts), "--out", str(out))
    assert third.exit_code == 0 and "2 already done" in third.output
    now = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert sorted(name for name in now if now[name] != stamps[name]) == ["beta.json", "beta.nii.gz"]


def test_world_coordinates_give_the_voxel_result(cases, run, tmp_path: Path):
    """On an axis-aligned grid a world box (mm) is the voxel box; on an oblique one it would enclose it."""
    source, boxes = cases
    image = sitk.ReadImage(str(source / "alpha.nii.gz"))
    volume = source / "alpha.nii.gz"
    results = []
    for coordinates in ("voxel", "world"):
        b = boxes["alpha"]["liver"]
        box = b if coordinates == "voxel" else [
            *image.TransformIndexToPhysicalPoint(b[:3]), *image.TransformIndexToPhysicalPoint(b[3:])]
        prompts = tmp_path / f"{coordinates}.json"
        prompts.write_text(json.dumps({"coordinates": coordinates, "prompts": [{"class": "liver", "box": box}]}))
        result = run(str(volume), "--boxes", str(prompts), "--out", str(tmp_path / coordinates))
        assert result.exit_code == 0, result.output
        results.append(read_volume(tmp_path / coordinates / "alpha.nii.gz").array)
    np.testing.assert_array_equal(*results)
    assert results[0].any()


BAD = {
    "bad JSON": ("{\"coordinates\": \"voxel\", ", "invalid JSON"),
    "no coordinates": ({"prompts": [{"class": "liver", "box": [0, 0, 0, 1, 1, 1]}]}, "'coordinates'"),
    "box outside": ({"coordinates": "voxel", "prompts": [{"class": "liver", "box": [0, 0, 0, 40, 10, 3]}]},
                    "outside the volume"),
    "unknown class": ({"coordinates": "voxel", "classes": {"liver": 1},
                       "prompts": [{"class": "lung", "box": [0, 0, 0, 5, 5, 3]}]}, "unknown class 'lung'"),
    "clicks on two slices": ({"coordinates": "voxel", "prompts": [
        {"class": "liver", "points": [[5, 5, 1], [6, 6, 2]], "labels": [1, 1]}]}, "one axial slice"),
    "labels missing": ({"coordinates": "voxel", "prompts": [{"class": "liver", "points": [[5, 5, 1]]}]}, "'labels'"),
    "unknown field": ({"coordinates": "voxel", "prompts": [{"class": "liver", "bbox": [0, 0, 0, 5, 5, 3]}]},
                      "unknown field"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_prompt_files_end_in_one_line_and_exit_2(cases, run, tmp_path: Path, name: str):
    source, _ = cases
    content, message = BAD[name]
    prompts = tmp_path / "prompts.json"
    prompts.write_text(content if isinstance(content, str) else json.dumps(content))
    out = tmp_path / "out"
    result = run(str(source / "alpha.nii.gz"), "--boxes", str(prompts), "--out", str(out))
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("samadapt: error: ") and message in lines[0], result.stderr
    assert str(prompts) in lines[0] and "Traceback" not in result.output
    assert not out.exists() or not list(out.glob("*.nii.gz"))


def test_missing_cases_and_modes_are_refused_before_any_work(cases, run, tmp_path: Path):
    source, boxes = cases
    prompts = tmp_path / "prompts.json"
    partial = _prompts(boxes)
    del partial["cases"]["gamma"]
    prompts.write_text(json.dumps(partial))
    result = run(str(source), "--boxes", str(prompts), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2 and "no prompts for case 'gamma'" in result.stderr
    assert not (tmp_path / "out").exists()  # alpha and beta were not segmented either
    for args, message in ((["--auto"], "--adapter"), ([], "either --boxes"),
                          (["--auto", "--boxes", str(prompts)], "either --boxes")):
        result = run(str(source), *args, "--out", str(tmp_path / "out"))
        assert result.exit_code == 2 and message in result.stderr


def test_cases_are_found_by_file_and_series_folder(tmp_path: Path):
    from samadapt.errors import InputFileError
    from samadapt.inference.segment_cases import find_cases

    (tmp_path / "in").mkdir()
    for name in ("b_0000.nii.gz", "a.nrrd", "notes.txt", ".hidden.nii"):
        (tmp_path / "in" / name).write_bytes(b"")
    (tmp_path / "in" / "series_c").mkdir()
    assert [(c.case_id, c.path.name) for c in find_cases(tmp_path / "in")] == [
        ("a", "a.nrrd"), ("b", "b_0000.nii.gz"), ("series_c", "series_c")]
    (tmp_path / "in" / "b.mha").write_bytes(b"")
    with pytest.raises(InputFileError, match="share case id 'b'"):
        find_cases(tmp_path / "in")
    (tmp_path / "dicom").mkdir()
    (tmp_path / "dicom" / "IM0001").write_bytes(b"")
    assert [c.path for c in find_cases(tmp_path / "dicom")] == [tmp_path / "dicom"]  # the folder is the series
    with pytest.raises(InputFileError, match="not a volume"):
        find_cases(tmp_path / "in" / "notes.txt")


REAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "real"


@pytest.mark.skipif(not (REAL / "ct_liver_dicom").is_dir(), reason="shared/data/real is not here")
def test_real_dicom_series_and_nifti_keep_their_geometry(run, tmp_path: Path, voxel_box):
    liver = read_volume(REAL / "ct_liver_dicom" / "liver_spine_seg.nrrd").array == 1
    abdomen = read_volume(REAL / "ct_abdomen_nifti" / "example_seg.nii.gz").array == 5  # liver in TotalSegmentator
    for source, mask in ((REAL / "ct_liver_dicom" / "ct-3slice", liver),
                         (REAL / "ct_abdomen_nifti" / "example_ct_sm.nii.gz", abdomen)):
        prompts = tmp_path / "prompts.json"
        prompts.write_text(json.dumps({"coordinates": "voxel",
                                       "prompts": [{"class": "liver", "box": voxel_box(mask)}]}))
        out = tmp_path / source.name.split(".")[0]
        result = run(str(source), "--boxes", str(prompts), "--out", str(out))
        assert result.exit_code == 0, result.output
        written, original = read_volume(next(out.glob("*.nii.gz"))), read_volume(source)
        assert written.array.shape == original.array.shape and written.array.any()
        for field in ("spacing", "origin", "direction"):
            np.testing.assert_allclose(getattr(written.geometry, field), getattr(original.geometry, field),
                                       rtol=1e-6, atol=1e-4)
