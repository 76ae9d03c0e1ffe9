"""`samadapt prepare` on awkward input (issue 19): NaN in NIfTI, output folders it did not make, damaged
shards of a prepared dataset, paths that are not UTF-8, and DICOM series as volume cases."""

from __future__ import annotations

import json
import locale
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
from typer.testing import CliRunner

from samadapt.cli import app
from samadapt.config import PrepareConfig
from samadapt.data.prepare import prepare_dataset
from samadapt.data.prepared import PreparedDataset
from samadapt.errors import ConfigError, DatasetError
from samadapt.io.volume import Geometry, write_volume
from support import one_line_error

REAL_DICOM = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "real" / "ct_liver_dicom"
SMALL = PrepareConfig(image_size=64, keep_empty_ratio=0.5)
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
LABELS = {"background": 0, "liver": [1, 2], "tumor": 2, "spleen": 3}
SHAPE = (4, 40, 48)  # (Z, Y, X)


def _geometry(origin=(0.0, 0.0, 0.0)) -> Geometry:
    return Geometry(tuple(reversed(SHAPE)), (0.75, 0.75, 2.5), origin, IDENTITY)


def _case_arrays(k: int) -> tuple[np.ndarray, np.ndarray]:
    """int16 HU image and labels: liver (1) with a tumour (2) on slices 1..2, spleen (3) on slices 1..3."""
    image = np.random.default_rng(k).normal(-50, 20, size=SHAPE).astype(np.int16)
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[1:3, 6 + k:26, 4:24] = 1
    labels[1:3, 12 + k:18, 10:16] = 2
    labels[1:4, 10:30, 32:44] = 3
    image[labels == 1], image[labels == 2], image[labels == 3] = 60, 20, 45
    return image, labels


def make_nnunet(root: Path, n_cases: int, modify=None, ending: str = ".nii.gz") -> Path:
    """A tiny nnU-Net v2 dataset; ``modify(k, image, label, geometry)`` may alter case k."""
    for k in range(n_cases):
        image, label = _case_arrays(k)
        geometry = _geometry()
        if modify is not None:
            image, label, geometry = modify(k, image, label, geometry)
        write_volume(image, _geometry(), root / "imagesTr" / f"case{k}_0000{ending}")
        write_volume(label, geometry, root / "labelsTr" / f"case{k}{ending}")
    (root / "dataset.json").write_text(json.dumps({"name": "synthetic", "channel_names": {"0": "CT"},
                                                   "labels": LABELS, "numTraining": n_cases,
                                                   "file_ending": ending}))
    return root


def _prepare(*args: str):
    return CliRunner().invoke(app, ["prepare", *args, "--image-size", "64"])


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_nnunet(tmp_path_factory.mktemp("raw") / "Dataset001", n_cases=3)


@pytest.fixture(scope="module")
def prepared(raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "out"
    prepare_dataset(raw, out, SMALL)
    return out


# ----------------------------------------------------------------------------- 1. NaN / inf in NIfTI


@pytest.mark.parametrize("ending", [".nii.gz", ".nii"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_nifti_image_is_refused_in_one_line(tmp_path: Path, ending: str, bad: float):
    def modify(k, image, label, geometry):
        if k == 0:  # the first case: the run stops before any progress bar or shard
            image = image.astype(np.float32)
            image[1, 10, 10] = bad  # inside the liver: the reader would make it 0 HU without the check
        return image, label, geometry

    raw = make_nnunet(tmp_path / "raw", n_cases=2, modify=modify, ending=ending)
    out = tmp_path / "out"
    line = one_line_error(_prepare(str(raw), str(out)), f"case0_0000{ending}", "NaN or infinite", "fix or mask")
    assert "1 NaN" in line
    assert not out.exists()


def test_finite_float_nifti_is_prepared(tmp_path: Path):
    raw = make_nnunet(tmp_path / "raw", n_cases=2,
                      modify=lambda k, im, lab, g: (im.astype(np.float64) + 0.25, lab, g))
    assert PreparedDataset(prepare_dataset(raw, tmp_path / "out", SMALL).root).case_ids() == ["case0", "case1"]


# ----------------------------------------------------------------------------- 2. output folders


def test_a_folder_that_is_not_a_prepared_dataset_is_left_alone(raw: Path, tmp_path: Path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "manifest.json").write_text('{"my": "own manifest"}\n')
    (out / "notes.txt").write_text("keep me\n")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    one_line_error(_prepare(str(raw), str(out)), str(out), "not a samadapt prepared dataset", "new or empty folder")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing deleted, nothing added
    file_out = tmp_path / "file"
    file_out.write_text("x")
    one_line_error(_prepare(str(raw), str(file_out)), str(file_out), "is a file")
    assert file_out.read_text() == "x"


def test_a_prepared_dataset_of_another_source_is_refused(raw: Path, prepared: Path, tmp_path: Path):
    other = make_nnunet(tmp_path / "other", n_cases=2)
    manifest = (prepared / "manifest.json").read_bytes()
    one_line_error(_prepare(str(other), str(prepared)), str(prepared), str(raw.resolve()), "choose a new folder")
    assert (prepared / "manifest.json").read_bytes() == manifest
    PreparedDataset(prepared)


def test_same_source_resumes_also_after_an_unfinished_run(raw: Path, tmp_path: Path):
    out = tmp_path / "out"
    first = prepare_dataset(raw, out, SMALL)
    (out / "manifest.json").unlink()  # as a killed run leaves it: cases, no manifest
    (out / "config.yaml").unlink()
    again = prepare_dataset(raw, out, SMALL)
    assert again.hash == first.hash
    empty = tmp_path / "empty"
    empty.mkdir()
    assert prepare_dataset(raw, empty, SMALL).hash == first.hash  # an empty folder is fine


# ----------------------------------------------------------------------------- 6. damaged shards


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def _object_labels(path: Path) -> None:
    np.save(path, np.array([None, 1], dtype=object), allow_pickle=True)


def _drop_box(path: Path) -> None:
    objects = json.loads(path.read_text())
    del objects[0]["box"]
    path.write_text(json.dumps(objects))


DAMAGE = {
    "truncated images": ("images.npy", _truncate, "truncated"),
    "truncated header": ("images.npy", lambda p: p.write_bytes(p.read_bytes()[:40]), "not a readable .npy"),
    "empty labels": ("labels.npy", lambda p: p.write_bytes(b""), "not a readable .npy"),
    "object labels": ("labels.npy", _object_labels, "Python objects"),
    "float labels": ("labels.npy", lambda p: np.save(p, np.zeros((2, 64, 64), np.float32)), "float32"),
    "objects without box": ("objects.json", _drop_box, "lacks box"),
    "objects not json": ("objects.json", lambda p: p.write_text("[{"), "not JSON"),
    "meta not a dict": ("meta.json", lambda p: p.write_text("[]"), "valid_hw"),
    "missing meta": ("meta.json", lambda p: p.unlink(), "missing meta.json"),
}


@pytest.mark.parametrize("name", list(DAMAGE))
def test_damaged_shards_are_refused_on_open_and_rebuilt_by_prepare(raw: Path, prepared: Path, tmp_path: Path,
                                                                    name: str):
    out = tmp_path / "out"
    shutil.copytree(prepared, out)
    file_name, damage, words = DAMAGE[name]
    damage(out / "cases" / "case1" / file_name)
    with pytest.raises(DatasetError) as info:
        PreparedDataset(out)
    message = str(info.value)
    assert "\n" not in message and words in message and "rerun `samadapt prepare`" in message
    assert str(out / "cases" / "case1") in message
    result = CliRunner().invoke(app, ["embed", str(out), "--model", "tiny"])  # any command that opens it
    one_line_error(result, "case1", words, "rerun `samadapt prepare`")
    assert not (out / "embeddings").exists()
    rebuilt = prepare_dataset(raw, out, SMALL)  # what the message says to do: the damaged case is redone
    assert rebuilt.hash == PreparedDataset(prepared).hash


def test_manifest_slice_count_must_match_the_shard(prepared: Path, tmp_path: Path):
    out = tmp_path / "out"
    shutil.copytree(prepared, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["cases"][0]["n_slices"] += 1
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match="images.npy: holds .* slices, but manifest.json lists"):
        PreparedDataset(out)


# ----------------------------------------------------------------------------- 7. paths that are not UTF-8


def _rename_to_bytes(path: Path, name: bytes) -> Path:
    target = os.path.join(os.fsencode(path.parent), name)
    try:
        os.rename(os.fsencode(path), target)
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    return Path(os.fsdecode(target))


def test_a_source_path_that_is_not_utf8_is_refused_without_aborting(tmp_path: Path):
    raw = make_nnunet(tmp_path / "raw", n_cases=2)
    _rename_to_bytes(raw / "labelsTr" / "case1.nii.gz", b"case\xff1.nii.gz")
    _rename_to_bytes(raw / "imagesTr" / "case1_0000.nii.gz", b"case\xff1_0000.nii.gz")
    out = tmp_path / "out"
    # a separate process: were the path to reach ITK, it would abort the process (C++ std::logic_error)
    done = subprocess.run([sys.executable, "-m", "samadapt", "prepare", str(raw), str(out), "--image-size", "64"],
                          capture_output=True, text=True, errors="backslashreplace", timeout=300)
    assert done.returncode == 2, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("samadapt: error: "), done.stderr
    assert "case\\xff1" in lines[0] and "not UTF-8" in lines[0] and "rename" in lines[0]
    assert not out.exists()  # refused before any case was prepared


# ----------------------------------------------------------------------------- 8. DICOM series cases


def write_dicom_series(array: np.ndarray, geometry: Geometry, folder: Path, series: int) -> Path:
    """Write a ``(Z, Y, X)`` int16 volume as one CT DICOM file per axial slice (identity direction).

    GDCM's writer switches the process locale to "C" (Python's preferred encoding then becomes ASCII, which
    breaks later ``subprocess.run(text=True)`` calls of other tests), so the locale is put back afterwards.
    """
    folder.mkdir(parents=True)
    saved = locale.setlocale(locale.LC_ALL)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.2.1125.19"
    try:
        for z in range(array.shape[0]):
            image = sitk.GetImageFromArray(array[z])
            image.SetSpacing(geometry.spacing[:2])
            position = (geometry.origin[0], geometry.origin[1], geometry.origin[2] + z * geometry.spacing[2])
            for tag, value in {"0008|0060": "CT", "0020|000d": uid, "0020|000e": f"{uid}.{series}",
                               "0020|0013": str(z + 1), "0020|0032": "\\".join(str(v) for v in position),
                               "0020|0037": "1\\0\\0\\0\\1\\0", "0018|0050": str(geometry.spacing[2])}.items():
                image.SetMetaData(tag, value)
            writer.SetFileName(str(folder / f"IM{z:04d}.dcm"))
            writer.Execute(image)
    finally:
        locale.setlocale(locale.LC_ALL, saved)
    return folder


def test_dicom_series_folders_are_volume_cases(tmp_path: Path):
    """nnU-Net v2: imagesTr/<case>_0000/ is a series; MSD: an "image" entry names the series folder."""
    nifti = make_nnunet(tmp_path / "nifti", n_cases=2)
    geometry = _geometry(origin=(-20.0, 10.0, 40.0))
    dicom = tmp_path / "dicom"
    for k in range(2):
        image, label = _case_arrays(k)
        write_dicom_series(image, geometry, dicom / "imagesTr" / f"case{k}_0000", series=k)
        write_volume(label, geometry, dicom / "labelsTr" / f"case{k}.nrrd")
    described = json.loads((nifti / "dataset.json").read_text())
    (dicom / "dataset.json").write_text(json.dumps({**described, "file_ending": ".nrrd"}))
    from_nifti = prepare_dataset(nifti, tmp_path / "out_nifti", SMALL)
    from_dicom = prepare_dataset(dicom, tmp_path / "out_dicom", SMALL)
    for case_id in ("case0", "case1"):  # the same voxels give the same slices and objects
        np.testing.assert_array_equal(from_dicom.images(case_id), from_nifti.images(case_id))
        assert [o.box for o in from_dicom.objects(case_id)] == [o.box for o in from_nifti.objects(case_id)]
        meta = from_dicom.meta(case_id)
        assert meta["source_image"] == str(dicom / "imagesTr" / f"case{case_id[-1]}_0000")
        np.testing.assert_allclose(meta["geometry"]["origin"], geometry.origin)
        assert len(meta["source_files"]) == 4 + 1  # every slice file and the label decide the reuse
    # resume keeps the shards; a changed slice file redoes the case
    shard = tmp_path / "out_dicom" / "cases" / "case1" / "images.npy"
    stamp = shard.stat().st_mtime_ns
    prepare_dataset(dicom, tmp_path / "out_dicom", SMALL)
    assert shard.stat().st_mtime_ns == stamp
    slice_file = dicom / "imagesTr" / "case1_0000" / "IM0002.dcm"
    os.utime(slice_file, ns=(slice_file.stat().st_atime_ns, slice_file.stat().st_mtime_ns + 10**9))
    prepare_dataset(dicom, tmp_path / "out_dicom", SMALL)
    assert shard.stat().st_mtime_ns != stamp

    msd = tmp_path / "msd"
    shutil.copytree(dicom / "imagesTr", msd / "imagesTr")
    shutil.copytree(dicom / "labelsTr", msd / "labelsTr")
    (msd / "dataset.json").write_text(json.dumps({
        "modality": {"0": "CT"}, "labels": {"0": "background", "1": "liver", "2": "tumor", "3": "spleen"},
        "training": [{"image": f"./imagesTr/case{k}_0000", "label": f"./labelsTr/case{k}.nrrd"} for k in range(2)]}))
    assert prepare_dataset(msd, tmp_path / "out_msd", SMALL).case_ids() == ["case0_0000", "case1_0000"]


def test_dicom_series_folder_needs_its_channel_suffix(tmp_path: Path):
    raw = make_nnunet(tmp_path / "raw", n_cases=1)
    (raw / "imagesTr" / "series").mkdir()
    one_line_error(_prepare(str(raw), str(tmp_path / "out")), "imagesTr/series", "DICOM series folders",
                    "<case>_0000")


@pytest.mark.skipif(not REAL_DICOM.is_dir(), reason="shared/data/real/ct_liver_dicom is not here")
def test_real_dicom_series_with_nrrd_label(tmp_path: Path):
    raw = tmp_path / "raw"
    (raw / "labelsTr").mkdir(parents=True)
    shutil.copytree(REAL_DICOM / "ct-3slice", raw / "imagesTr" / "liver_0000")
    shutil.copy(REAL_DICOM / "liver_spine_seg.nrrd", raw / "labelsTr" / "liver.nrrd")
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "vertebra": 2}, "numTraining": 1,
        "file_ending": ".nrrd"}))
    result = CliRunner().invoke(app, ["prepare", str(raw), str(tmp_path / "out"), "--image-size", "256"])
    assert result.exit_code == 0, result.output
    dataset = PreparedDataset(tmp_path / "out")
    assert dataset.images("liver").shape == (3, 256, 256)
    found = {(o.slice, o.class_name) for o in dataset.objects("liver")}
    assert found == {(s, c) for s in range(3) for c in ("liver", "vertebra")}
    meta = dataset.meta("liver")
    np.testing.assert_allclose(meta["geometry"]["spacing"], (0.810547, 0.810547, 1.0), atol=1e-5)
    assert dataset.images("liver").max() > 200  # windowed as CT (abdomen), not an empty image


def test_config_error_type_for_foreign_folders(raw: Path, tmp_path: Path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "a").write_text("")
    with pytest.raises(ConfigError):
        prepare_dataset(raw, tmp_path / "x", SMALL)
