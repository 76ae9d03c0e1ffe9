"""Volumes with geometry: every real scan and label in shared/data/real, round trips, bad input."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813

from samadapt.errors import GeometryMismatchError, InputFileError
from samadapt.io import volume as volume_module
from samadapt.io.volume import Geometry, Volume, check_same_grid, is_volume_path, read_volume, write_volume

REAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "real"
DICOM_SERIES = "ct_liver_dicom/ct-3slice"
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

# What the README of shared/data/real documents, plus what the files hold (measured once):
# relative path -> (size x, y, z), spacing mm, dtype.
EXPECTED = {
    "ct_abdomen_nifti/example_ct_sm.nii.gz": ((122, 101, 30), (3.0, 3.0, 3.0), np.int16),
    "ct_abdomen_nifti/example_seg.nii.gz": ((122, 101, 30), (3.0, 3.0, 3.0), np.uint8),
    "ct_abdomen_nifti/example_mr_sm.nii.gz": ((117, 91, 20), (3.0, 3.0, 3.0), np.int16),
    "ct_abdomen_nifti/example_seg_mr.nii.gz": ((117, 91, 20), (3.0, 3.0, 3.0), np.uint8),
    DICOM_SERIES: ((512, 512, 3), (0.81, 0.81, 1.0), np.int32),
    "ct_liver_dicom/liver_spine_seg.nrrd": ((512, 512, 3), (0.81, 0.81, 1.0), np.int16),
    "ct_lung_mr_brain_nrrd/lung1_image.nrrd": ((512, 512, 48), (0.57, 0.57, 5.0), np.int16),
    "ct_lung_mr_brain_nrrd/lung1_label.nrrd": ((512, 512, 48), (0.57, 0.57, 5.0), np.int16),
    "ct_lung_mr_brain_nrrd/brain1_image.nrrd": ((256, 256, 25), (0.78, 0.78, 6.5), np.int16),
    "ct_lung_mr_brain_nrrd/brain1_label.nrrd": ((256, 256, 25), (0.78, 0.78, 6.5), np.int32),
}
# label -> its image
PAIRS = {
    "ct_abdomen_nifti/example_seg.nii.gz": "ct_abdomen_nifti/example_ct_sm.nii.gz",
    "ct_abdomen_nifti/example_seg_mr.nii.gz": "ct_abdomen_nifti/example_mr_sm.nii.gz",
    "ct_liver_dicom/liver_spine_seg.nrrd": DICOM_SERIES,
    "ct_lung_mr_brain_nrrd/lung1_label.nrrd": "ct_lung_mr_brain_nrrd/lung1_image.nrrd",
    "ct_lung_mr_brain_nrrd/brain1_label.nrrd": "ct_lung_mr_brain_nrrd/brain1_image.nrrd",
}


@pytest.fixture(scope="module")
def real() -> Path:
    if not REAL.is_dir():
        pytest.skip(f"real data not found at {REAL}")
    return REAL


@functools.cache
def _read(relative: str) -> Volume:
    return read_volume(REAL / relative)


def test_expectations_cover_every_real_volume(real: Path) -> None:
    files = {p.relative_to(real).as_posix() for p in real.rglob("*") if p.is_file() and is_volume_path(p)}
    dicom_files = {p.relative_to(real).as_posix() for p in (real / DICOM_SERIES).iterdir()}
    assert dicom_files == {f"{DICOM_SERIES}/0{i}.dcm" for i in (1, 2, 3)}
    assert files == set(EXPECTED) - {DICOM_SERIES}


@pytest.mark.parametrize("relative", sorted(EXPECTED))
def test_real_volume_shape_spacing_dtype(real: Path, relative: str) -> None:
    size, spacing, dtype = EXPECTED[relative]
    volume = _read(relative)
    assert volume.geometry.size == size
    assert volume.array.shape == tuple(reversed(size))  # (Z, Y, X)
    assert volume.array.dtype == dtype
    np.testing.assert_allclose(volume.geometry.spacing, spacing, atol=0.01)
    direction = np.asarray(volume.geometry.direction).reshape(3, 3)
    np.testing.assert_allclose(direction @ direction.T, np.eye(3), atol=1e-6)
    assert volume.path == real / relative


@pytest.mark.parametrize("label_path", sorted(PAIRS))
def test_real_labels_lie_on_their_image_grid(real: Path, label_path: str) -> None:
    image, label = _read(PAIRS[label_path]), _read(label_path)
    check_same_grid(image, label)
    assert label.array.shape == image.array.shape
    assert label.geometry.origin == pytest.approx(image.geometry.origin, abs=1e-3)


def test_real_ct_intensities_are_hounsfield(real: Path) -> None:
    for relative in ("ct_abdomen_nifti/example_ct_sm.nii.gz", DICOM_SERIES, "ct_lung_mr_brain_nrrd/lung1_image.nrrd"):
        array = _read(relative).array
        assert array.min() <= -1000, relative  # air (or the scanner's padding value below it)
        assert np.percentile(array, 99.9) > 200, relative  # contrast / bone
        assert np.median(array) < 100, relative


def test_real_abdomen_labels_match_their_class_maps(real: Path) -> None:
    class_map = json.loads((real / "ct_abdomen_nifti/class_map_total.json").read_text())
    for relative, key, count in (("ct_abdomen_nifti/example_seg.nii.gz", "total", 41),
                                 ("ct_abdomen_nifti/example_seg_mr.nii.gz", "total_mr", 23)):
        values = set(np.unique(_read(relative).array).tolist()) - {0}
        assert len(values) == count
        assert values <= {int(k) for k in class_map[key]}
    ct_values = set(np.unique(_read("ct_abdomen_nifti/example_seg.nii.gz").array).tolist())
    names = {class_map["total"][str(v)] for v in ct_values - {0}}
    assert {"liver", "spleen", "aorta"} <= names


def test_real_small_labels_hold_the_documented_voxels(real: Path) -> None:
    lung = _read("ct_lung_mr_brain_nrrd/lung1_label.nrrd").array
    brain = _read("ct_lung_mr_brain_nrrd/brain1_label.nrrd").array
    assert set(np.unique(lung).tolist()) == {0, 1} and int(lung.sum()) == 837
    assert set(np.unique(brain).tolist()) == {0, 1} and int(brain.sum()) == 4137
    liver_spine = _read("ct_liver_dicom/liver_spine_seg.nrrd").array
    assert set(np.unique(liver_spine).tolist()) == {0, 1, 2}  # 1 liver, 2 vertebra


def test_real_dicom_series_geometry_and_slices(real: Path) -> None:
    series = _read(DICOM_SERIES)
    geometry = series.geometry
    assert geometry.spacing[0] == pytest.approx(0.81, abs=0.005)
    assert geometry.spacing[1] == pytest.approx(0.81, abs=0.005)
    assert geometry.spacing[2] == pytest.approx(1.0, abs=1e-6)
    assert geometry.direction == pytest.approx(IDENTITY)
    # Each file read alone is one slice; together they step 1 mm in z, and the series stacks them in order.
    slices = [read_volume(real / DICOM_SERIES / f"0{i}.dcm") for i in (1, 2, 3)]
    slices.sort(key=lambda v: v.geometry.origin[2])
    for v in slices:
        assert v.array.shape == (1, 512, 512)
    z = [v.geometry.origin[2] for v in slices]
    assert np.diff(z) == pytest.approx([1.0, 1.0], abs=1e-4)
    assert geometry.origin == pytest.approx(slices[0].geometry.origin, abs=1e-4)
    for k, v in enumerate(slices):
        np.testing.assert_array_equal(series.array[k], v.array[0])


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
@pytest.mark.parametrize("label_path", sorted(PAIRS))
def test_label_round_trip_keeps_array_and_geometry(real: Path, tmp_path: Path, label_path: str,
                                                   suffix: str) -> None:
    source = _read(label_path)
    out = write_volume(source.array, source.geometry, tmp_path / f"label{suffix}")
    back = read_volume(out)
    assert back.array.dtype == source.array.dtype
    np.testing.assert_array_equal(back.array, source.array)
    assert back.geometry.size == source.geometry.size
    if suffix == ".nii.gz" and not label_path.endswith(".nii.gz"):
        # NIfTI stores spacing and the affine as float32: exact to float32 precision only.
        for what in ("spacing", "origin", "direction"):
            np.testing.assert_allclose(getattr(back.geometry, what), getattr(source.geometry, what),
                                       rtol=1e-6, atol=1e-5)
    else:
        assert back.geometry == source.geometry
    check_same_grid(_read(PAIRS[label_path]), back)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary left behind


def test_geometry_dict_round_trip(real: Path) -> None:
    geometry = _read("ct_lung_mr_brain_nrrd/brain1_image.nrrd").geometry
    assert Geometry.from_dict(json.loads(json.dumps(geometry.to_dict()))) == geometry


# ------------------------------------------------------------------------------------------ bad input


def test_truncated_nifti_gz_is_an_input_error(real: Path, tmp_path: Path) -> None:
    data = (real / "ct_abdomen_nifti/example_ct_sm.nii.gz").read_bytes()
    for name, keep in (("half.nii.gz", len(data) // 2), ("header_only.nii.gz", 300),
                       ("tail_cut.nii.gz", len(data) - 100), ("stub.nii.gz", 40)):
        path = tmp_path / name
        path.write_bytes(data[:keep])
        with pytest.raises(InputFileError, match=name):
            read_volume(path)


def test_truncated_uncompressed_nifti_is_an_input_error(real: Path, tmp_path: Path) -> None:
    ct = _read("ct_abdomen_nifti/example_ct_sm.nii.gz")
    full = write_volume(ct.array, ct.geometry, tmp_path / "full.nii", compress=False)
    np.testing.assert_array_equal(read_volume(full).array, ct.array)
    cut = tmp_path / "cut.nii"
    cut.write_bytes(full.read_bytes()[:-1000])
    with pytest.raises(InputFileError, match="cut.nii: is truncated"):
        read_volume(cut)


def test_truncated_nrrd_is_an_input_error(real: Path, tmp_path: Path) -> None:
    data = (real / "ct_liver_dicom/liver_spine_seg.nrrd").read_bytes()
    path = tmp_path / "seg_cut.nrrd"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputFileError, match="seg_cut.nrrd"):
        read_volume(path)


def test_text_file_named_nrrd_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.nrrd"
    path.write_text("this is not an image\n")
    with pytest.raises(InputFileError, match="notes.nrrd") as info:
        read_volume(path)
    assert "\n" not in str(info.value)


def test_missing_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="absent.nii.gz: no such file"):
        read_volume(tmp_path / "absent.nii.gz")


def test_folder_without_dicom_is_an_input_error(tmp_path: Path) -> None:
    folder = tmp_path / "not_dicom"
    folder.mkdir()
    (folder / "readme.txt").write_text("no images here\n")
    with pytest.raises(InputFileError, match="not_dicom: no DICOM series"):
        read_volume(folder)


def _copy_series(real: Path, folder: Path) -> Path:
    shutil.copytree(real / DICOM_SERIES, folder)
    for file in folder.iterdir():
        file.chmod(0o644)
    return folder


def test_dicom_series_with_a_truncated_slice_names_it(real: Path, tmp_path: Path) -> None:
    folder = _copy_series(real, tmp_path / "series")
    (folder / "readme.txt").write_text("other files in the folder are ignored\n")
    assert read_volume(folder).array.shape == (3, 512, 512)
    slice_2 = folder / "02.dcm"
    slice_2.write_bytes(slice_2.read_bytes()[:-20000])
    with pytest.raises(InputFileError, match="02.dcm: belongs to the DICOM series"):
        read_volume(folder)


def test_dicom_series_with_a_missing_slice_gap_is_an_input_error(real: Path, tmp_path: Path) -> None:
    pydicom = pytest.importorskip("pydicom")
    folder = _copy_series(real, tmp_path / "gap")
    # Move the top slice 2 mm further away: gaps of 1 and 3 mm, as if a slice were missing.
    top = max(folder.glob("*.dcm"), key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
    ds = pydicom.dcmread(top)
    ds.ImagePositionPatient[2] = float(ds.ImagePositionPatient[2]) + 2.0
    ds.save_as(top)
    with pytest.raises(InputFileError, match="gap: slices are not evenly spaced"):
        read_volume(folder)


def test_mismatched_label_grid_names_the_label(real: Path, tmp_path: Path) -> None:
    image = _read(DICOM_SERIES)
    label = _read("ct_liver_dicom/liver_spine_seg.nrrd")
    g = label.geometry
    shifted = Geometry(g.size, g.spacing, (g.origin[0] + 5.0, g.origin[1], g.origin[2]), g.direction)
    moved = read_volume(write_volume(label.array, shifted, tmp_path / "moved_seg.nrrd"))
    with pytest.raises(GeometryMismatchError, match="moved_seg.nrrd: origin"):
        check_same_grid(image, moved)
    cropped_geometry = Geometry((g.size[0], g.size[1], 2), g.spacing, g.origin, g.direction)
    cropped = read_volume(write_volume(label.array[:2], cropped_geometry, tmp_path / "cropped_seg.nii.gz"))
    with pytest.raises(GeometryMismatchError, match="cropped_seg.nii.gz: size"):
        check_same_grid(image, cropped)
    coarse = Geometry(g.size, (g.spacing[0] * 2, g.spacing[1], g.spacing[2]), g.origin, g.direction)
    resampled = read_volume(write_volume(label.array, coarse, tmp_path / "coarse_seg.nrrd"))
    with pytest.raises(GeometryMismatchError, match="coarse_seg.nrrd: spacing"):
        check_same_grid(image, resampled)


def _small() -> tuple[np.ndarray, Geometry]:
    array = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    return array, Geometry((6, 5, 4), (0.5, 0.7, 2.0), (10.0, -20.0, 30.0), IDENTITY)


def test_write_volume_rejects_wrong_shape_and_format_without_writing(tmp_path: Path) -> None:
    array, geometry = _small()
    with pytest.raises(GeometryMismatchError, match="wrong.nii.gz"):
        write_volume(array[:2], geometry, tmp_path / "wrong.nii.gz")
    with pytest.raises(InputFileError, match="label.png: unknown volume format"):
        write_volume(array, geometry, tmp_path / "label.png")
    assert list(tmp_path.iterdir()) == []


def test_write_volume_failing_midway_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    array, geometry = _small()
    target = tmp_path / "out.nii.gz"
    real_write = sitk.WriteImage

    def disk_full(image: sitk.Image, filename: str, *args: object, **kwargs: object) -> None:
        real_write(image, filename, *args, **kwargs)  # a complete file under the temporary name...
        Path(filename).write_bytes(Path(filename).read_bytes()[:50])  # ...cut short, then the failure
        raise RuntimeError("sitk::ERROR: No space left on device")

    monkeypatch.setattr(volume_module.sitk, "WriteImage", disk_full)
    with pytest.raises(InputFileError, match="out.nii.gz: cannot be written"):
        write_volume(array, geometry, target)
    assert list(tmp_path.iterdir()) == []


def test_write_volume_failure_keeps_the_previous_file(tmp_path: Path) -> None:
    array, geometry = _small()
    target = write_volume(array, geometry, tmp_path / "keep.nrrd")
    with pytest.raises(GeometryMismatchError):
        write_volume(array[:1], geometry, target)
    blocked = tmp_path / "blocked.nrrd"
    blocked.mkdir()  # a folder where the file should go: the final rename fails
    with pytest.raises(InputFileError, match="blocked.nrrd: cannot be written"):
        write_volume(array, geometry, blocked)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocked.nrrd", "keep.nrrd"]
    back = read_volume(target)
    np.testing.assert_array_equal(back.array, array)
    assert back.geometry == geometry
