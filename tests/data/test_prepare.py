import gzip
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK
from PIL import Image
from typer.testing import CliRunner

from samadapt.cli import app
from samadapt.config import PrepareConfig, load_config
from samadapt.data.orientation import orient_slice, put_slice, slice_flips, take_slice
from samadapt.data.prepare import assign_splits, prepare_dataset
from samadapt.data.prepared import PreparedDataset, SliceObject
from samadapt.errors import ConfigError, DatasetError, GeometryMismatchError, InputFileError
from samadapt.io.volume import Geometry, write_volume

REAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "real"
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
LABELS = {"background": 0, "liver": [1, 2], "tumor": 2, "spleen": 3}
SHAPE = (6, 40, 48)  # (Z, Y, X)


def _geometry(shape=SHAPE, spacing=(0.75, 0.75, 2.5), direction=IDENTITY) -> Geometry:
    return Geometry(tuple(reversed(shape)), spacing, (0.0, 0.0, 0.0), direction)


def _case_arrays(k: int, shape=SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """HU image and labels: liver block (1) with a tumour (2) on slices 1..3, spleen (3) on slices 2..4."""
    rng = np.random.default_rng(k)
    image = rng.normal(-50, 20, size=shape).astype(np.int16)
    labels = np.zeros(shape, dtype=np.uint8)
    labels[1:4, 6 + k:26, 4:24] = 1
    labels[1:4, 12 + k:18, 10:16] = 2
    labels[2:5, 10:30, 32:44] = 3
    image[labels == 1] = 60
    image[labels == 2] = 20
    image[labels == 3] = 45
    return image, labels


def make_nnunet(root: Path, n_cases: int = 4, labels: dict = LABELS, shape=SHAPE,
                modify=None, ending: str = ".nii.gz") -> Path:
    """Write a tiny nnU-Net v2 dataset; ``modify(k, image, label, geometry)`` may alter case k."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for k in range(n_cases):
        image, label = _case_arrays(k, shape)
        image_geometry = label_geometry = _geometry(shape)
        if modify is not None:
            image, label, label_geometry = modify(k, image, label, label_geometry)
        write_volume(image, image_geometry, root / "imagesTr" / f"case{k}_0000{ending}")
        write_volume(label, label_geometry, root / "labelsTr" / f"case{k}{ending}")
    (root / "dataset.json").write_text(json.dumps({"name": "synthetic", "channel_names": {"0": "CT"},
                                                   "labels": labels, "numTraining": n_cases,
                                                   "file_ending": ending}))
    return root


@pytest.fixture(scope="module")
def nnunet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_nnunet(tmp_path_factory.mktemp("raw") / "Dataset001")


SMALL = PrepareConfig(image_size=64, keep_empty_ratio=0.5)


def test_nnunet_prepared_format(nnunet: Path, tmp_path: Path):
    calls = []
    ds = prepare_dataset(nnunet, tmp_path / "out", SMALL, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (4, 4)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and manifest["image_size"] == 64
    assert manifest["source"]["layout"] == "nnunet" and manifest["source"]["name"] == "synthetic"
    assert manifest["classes"] == [{"name": "liver", "values": [1, 2], "index": 1},
                                   {"name": "tumor", "values": [2], "index": 2},
                                   {"name": "spleen", "values": [3], "index": 3}]
    assert sorted(c["split"] for c in manifest["cases"]) == ["test", "train", "train", "val"]
    assert (tmp_path / "out" / "config.yaml").is_file()
    assert load_config(PrepareConfig, tmp_path / "out" / "config.yaml") == SMALL

    images, labels = ds.images("case0"), ds.labels("case0")
    assert images.dtype == np.uint8 and labels.dtype == np.uint16
    assert images.shape[1:] == labels.shape[1:] == (64, 64)
    assert images[0].nbytes == 64 * 64  # compact: one byte per model-frame pixel
    meta = ds.meta("case0")
    assert meta["axis"] == "axial" and meta["source_hw"] == [40, 48] and meta["valid_hw"] == [53, 64]
    assert meta["pixel_spacing_mm"] == pytest.approx([0.75 * 40 / 53, 0.75 * 48 / 64])
    assert meta["slice_spacing_mm"] == 2.5 and meta["flip_hw"] == [False, False]
    assert Geometry.from_dict(meta["geometry"]) == _geometry()
    # every slice with an object (1..4) is kept; 0 and 5 are empty
    assert set(meta["slice_indices"]) >= {1, 2, 3, 4} and len(meta["slice_indices"]) == images.shape[0]

    objects = ds.objects("case0")
    assert sum(c["n_objects"] for c in manifest["cases"] if c["case_id"] == "case0") == len(objects)
    for obj in objects:
        mask = ds.object_mask("case0", obj)
        assert mask.sum() == obj.area >= SMALL.min_area
        ys, xs = np.nonzero(mask)
        assert obj.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert obj.instance == 0
    per_slice = {}
    for obj in objects:
        per_slice.setdefault(obj.slice, {})[obj.class_name] = obj
    for slice_objects in per_slice.values():
        if "tumor" in slice_objects:  # the organ (region liver = [1, 2]) contains its lesion
            liver, tumor = slice_objects["liver"].box, slice_objects["tumor"].box
            assert liver[0] <= tumor[0] and liver[1] <= tumor[1] and liver[2] >= tumor[2] and liver[3] >= tumor[3]
            assert slice_objects["liver"].area > slice_objects["tumor"].area
    assert {o.class_name for o in objects} == {"liver", "tumor", "spleen"}
    assert isinstance(objects[0], SliceObject) and objects[0].case_id == "case0"


def test_keep_empty_ratio_and_min_area(nnunet: Path, tmp_path: Path):
    none = prepare_dataset(nnunet, tmp_path / "none", PrepareConfig(image_size=64, keep_empty_ratio=0.0))
    every = prepare_dataset(nnunet, tmp_path / "all", PrepareConfig(image_size=64, keep_empty_ratio=1.0))
    assert none.meta("case1")["slice_indices"] == [1, 2, 3, 4]
    assert every.meta("case1")["slice_indices"] == list(range(6))
    big = prepare_dataset(nnunet, tmp_path / "big", PrepareConfig(image_size=64, keep_empty_ratio=0.0,
                                                                    min_area=200))
    assert all(o.area >= 200 for cid in big.case_ids() for o in big.objects(cid))
    assert "tumor" not in {o.class_name for cid in big.case_ids() for o in big.objects(cid)}
    subset = prepare_dataset(nnunet, tmp_path / "sub", PrepareConfig(image_size=64, classes=["spleen"],
                                                                       keep_empty_ratio=0.0))
    assert subset.classes == [{"name": "spleen", "values": [3], "index": 1}]
    assert subset.meta("case0")["slice_indices"] == [2, 3, 4]
    assert set(np.unique(subset.labels("case0"))) == {0, 3}  # other classes became background


def test_determinism_and_resume(nnunet: Path, tmp_path: Path):
    first = prepare_dataset(nnunet, tmp_path / "a", SMALL)
    second = prepare_dataset(nnunet, tmp_path / "b", SMALL)
    assert first.hash == second.hash and first.manifest["cases"] == second.manifest["cases"]
    other = prepare_dataset(nnunet, tmp_path / "c", PrepareConfig(image_size=64, keep_empty_ratio=0.5, seed=3))
    assert other.hash != first.hash

    # kill simulation: one case and the manifest lost; the rest is kept as it is
    out = tmp_path / "a"
    kept = out / "cases" / "case2" / "images.npy"
    stamp = kept.stat().st_mtime_ns
    shutil.rmtree(out / "cases" / "case1")
    (out / "manifest.json").unlink()
    (out / "cases" / ".case1.abc123.tmp").mkdir()  # a half-written shard of the killed run
    with pytest.raises(DatasetError):
        PreparedDataset(out)
    resumed = prepare_dataset(nnunet, out, SMALL)
    assert resumed.hash == first.hash
    assert kept.stat().st_mtime_ns == stamp
    assert not list((out / "cases").glob(".*"))
    # a source file that changed is prepared again
    label = nnunet / "labelsTr" / "case2.nii.gz"
    os.utime(label, ns=(label.stat().st_atime_ns, label.stat().st_mtime_ns + 10**9))
    again = prepare_dataset(nnunet, out, SMALL)
    assert again.hash == first.hash and kept.stat().st_mtime_ns != stamp
    # other parameters: shards are rebuilt, not reused
    changed = prepare_dataset(nnunet, out, PrepareConfig(image_size=32, keep_empty_ratio=0.5))
    assert changed.images("case2").shape[1:] == (32, 32) and changed.hash != first.hash


def test_assign_splits():
    ids = [f"c{i}" for i in range(20)]
    splits = assign_splits(ids, (0.7, 0.15, 0.15), seed=0)
    assert [list(splits.values()).count(s) for s in ("train", "val", "test")] == [14, 3, 3]
    assert splits == assign_splits(list(reversed(ids)), (0.7, 0.15, 0.15), seed=0)
    assert splits != assign_splits(ids, (0.7, 0.15, 0.15), seed=1)
    three = assign_splits(["a", "b", "c"], (0.7, 0.15, 0.15), seed=0)
    assert sorted(three.values()) == ["test", "train", "val"]
    assert set(assign_splits(["a", "b"], (0.7, 0.15, 0.15), seed=0).values()) == {"train"}
    assert set(assign_splits(ids, (1.0, 0.0, 0.0), seed=0).values()) == {"train"}


def test_orientation_flips_follow_direction():
    # RAS-stored volume (as written by many NIfTI tools): rows run anterior, columns run right
    ras = _geometry(direction=(-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))
    assert slice_flips(ras, "axial") == (True, True)
    assert slice_flips(_geometry(), "axial") == (False, False)
    assert slice_flips(_geometry(), "coronal") == (True, False)  # superior up
    assert slice_flips(_geometry(), "sagittal") == (True, False)
    volume = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    oriented = take_slice(volume, "axial", 1, (True, True))
    np.testing.assert_array_equal(oriented, volume[1, ::-1, ::-1])
    np.testing.assert_array_equal(orient_slice(oriented, (True, True)), volume[1])
    np.testing.assert_array_equal(take_slice(volume, "sagittal", 2), volume[:, :, 2])
    for axis, n in (("axial", 2), ("coronal", 3), ("sagittal", 4)):
        copy = np.zeros_like(volume)
        for i in range(n):
            put_slice(copy, axis, i, take_slice(volume, axis, i, (True, False)), (True, False))
        np.testing.assert_array_equal(copy, volume)


# ----------------------------------------------------------------------------- validation


def _bad_dataset(tmp_path: Path, change, ending: str = ".nii.gz") -> Path:
    def modify(k, image, label, geometry):
        return change(image, label, geometry) if k == 1 else (image, label, geometry)

    return make_nnunet(tmp_path / "raw", n_cases=2, modify=modify, ending=ending)


@pytest.mark.parametrize("change, error, words", [
    (lambda im, lab, g: (im, lab, Geometry(g.size, (0.75, 0.75, 3.0), g.origin, g.direction)),
     GeometryMismatchError, "spacing"),
    (lambda im, lab, g: (im, np.where(lab == 3, 7, lab).astype(np.uint8), g), DatasetError, "7"),
    (lambda im, lab, g: (im, lab.astype(np.float32) * 0.5, g), DatasetError, "not integers"),
])
def test_validation_errors_name_the_file(tmp_path: Path, change, error, words):
    raw = _bad_dataset(tmp_path, change)
    _assert_fails_cleanly(raw, tmp_path / "out", error, words)


def test_nan_image_is_refused(tmp_path: Path):
    # NRRD keeps NaN (ITK's NIfTI reader turns NaN into 0 on read, so NIfTI never shows one)
    nan = _bad_dataset(tmp_path, lambda im, lab, g: (np.where(lab == 1, np.nan, im.astype(np.float32)), lab, g),
                       ending=".nrrd")
    _assert_fails_cleanly(nan, tmp_path / "out", InputFileError, "NaN")


def _assert_fails_cleanly(raw: Path, out: Path, error, words):
    with pytest.raises(error) as info:
        prepare_dataset(raw, out, SMALL)
    message = str(info.value)
    assert "case1" in message and words in message and "\n" not in message
    assert not (out / "manifest.json").exists()
    assert not (out / "cases" / "case1").exists()


def test_failure_removes_a_stale_manifest(tmp_path: Path):
    raw, out = make_nnunet(tmp_path / "raw", n_cases=2), tmp_path / "out"
    prepare_dataset(raw, out, SMALL)
    label_path = raw / "labelsTr" / "case1.nii.gz"
    image, label = _case_arrays(1)
    write_volume(np.where(label == 3, 9, label).astype(np.uint8), _geometry(), label_path)  # the source changes
    with pytest.raises(DatasetError, match="case1"):
        prepare_dataset(raw, out, SMALL)
    assert not (out / "manifest.json").exists()
    assert not list(out.glob("**/*.tmp*"))
    write_volume(label, _geometry(), label_path)  # fixed: the unfinished folder is still recognised as this source's
    assert PreparedDataset(prepare_dataset(raw, out, SMALL).root).case_ids() == ["case0", "case1"]


def test_empty_results_and_bad_settings(tmp_path: Path, nnunet: Path):
    empty = make_nnunet(tmp_path / "empty", n_cases=2, modify=lambda k, im, lab, g: (im, lab * 0, g))
    with pytest.raises(DatasetError, match="no objects"):
        prepare_dataset(empty, tmp_path / "o1", SMALL)
    assert not (tmp_path / "o1" / "manifest.json").exists()
    with pytest.raises(DatasetError, match="no objects"):
        prepare_dataset(nnunet, tmp_path / "o2", PrepareConfig(image_size=32, min_area=5000))
    (tmp_path / "none" / "imagesTr").mkdir(parents=True)
    (tmp_path / "none" / "labelsTr").mkdir()
    (tmp_path / "none" / "dataset.json").write_text(json.dumps(
        {"channel_names": {"0": "CT"}, "labels": LABELS, "file_ending": ".nii.gz"}))
    with pytest.raises(DatasetError):
        prepare_dataset(tmp_path / "none", tmp_path / "o3", SMALL)
    with pytest.raises(ConfigError, match="kidney"):
        prepare_dataset(nnunet, tmp_path / "o4", PrepareConfig(classes=["liver", "kidney"]))
    with pytest.raises(ConfigError):
        prepare_dataset(nnunet, tmp_path / "o5", PrepareConfig(window="abdomenn"))
    with pytest.raises(ConfigError):
        prepare_dataset(nnunet, nnunet / "inside", SMALL)
    with pytest.raises(ConfigError):
        PrepareConfig(axis="oblique")
    with pytest.raises(ConfigError):
        PrepareConfig(split=(0.5, 0.2, 0.2))


@pytest.mark.parametrize("shape, axis", [((5001, 2, 2), "axial"), ((2, 2, 4097), "axial"), ((2, 2, 4097), "coronal"),
                                         ((2, 2, 5001), "sagittal")])
def test_absurd_sizes_are_refused(tmp_path: Path, shape, axis):
    raw = make_nnunet(tmp_path / "raw", n_cases=1, shape=shape,
                      modify=lambda k, im, lab, g: (np.zeros(shape, np.int16), np.zeros(shape, np.uint8), g))
    with pytest.raises(InputFileError, match="exceed"):
        prepare_dataset(raw, tmp_path / "out", PrepareConfig(image_size=32, axis=axis))


def test_cli_prepare(nnunet: Path, tmp_path: Path):
    runner = CliRunner()
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("keep_empty_ratio: 0.0\nmin_area: 4\n")
    out = tmp_path / "out"
    result = runner.invoke(app, ["prepare", str(nnunet), str(out), "--image-size", "64", "--config", str(cfg),
                                 "--set", "classes=[liver,tumor]", "--seed", "2"])
    assert result.exit_code == 0, result.output
    assert str(out) in result.stdout
    saved = load_config(PrepareConfig, out / "config.yaml")
    assert (saved.image_size, saved.keep_empty_ratio, saved.min_area, saved.seed, saved.classes) == (
        64, 0.0, 4, 2, ["liver", "tumor"])
    assert PreparedDataset(out).manifest["split_seed"] == 2
    for args in (["--window", "nope"], ["--set", "bogus=1"], ["--axis", "oblique"], ["--set", "classes=[x]"]):
        bad = runner.invoke(app, ["prepare", str(nnunet), str(tmp_path / "bad"), *args])
        assert bad.exit_code == 2, bad.output
        assert bad.stderr.startswith("samadapt: error: ") and bad.stderr.count("\n") == 1
    missing = runner.invoke(app, ["prepare", str(tmp_path / "nowhere"), str(tmp_path / "bad")])
    assert missing.exit_code == 2 and "nowhere" in missing.stderr
    raw = _bad_dataset(tmp_path, lambda im, lab, g: (im, np.where(lab == 3, 7, lab).astype(np.uint8), g))
    undeclared = runner.invoke(app, ["prepare", str(raw), str(tmp_path / "bad2")])
    assert undeclared.exit_code == 2  # fails on the second case, after the progress bar started
    assert undeclared.stderr.splitlines()[-1].startswith("samadapt: error: ")
    assert "case1.nii.gz" in undeclared.stderr.splitlines()[-1]
    assert not (tmp_path / "bad2" / "manifest.json").exists()


def test_prepared_dataset_reader_errors(tmp_path: Path):
    with pytest.raises(DatasetError, match="manifest.json"):
        PreparedDataset(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(DatasetError, match="manifest.json"):
        PreparedDataset(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format_version": 1}))
    with pytest.raises(DatasetError, match="missing"):
        PreparedDataset(tmp_path)


# ----------------------------------------------------------------------------- 2D folders


def test_folder2d_instances_overlap_and_rgb(tmp_path: Path):
    root = tmp_path / "flat"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(root / "images" / "a.png")
    Image.fromarray(np.full((60, 80), 90, np.uint8)).save(root / "images" / "b.png")

    def mask(path, y0, y1, x0, x1, shape=(60, 80)):
        m = np.zeros(shape, np.uint8)
        m[y0:y1, x0:x1] = 255
        Image.fromarray(m).save(root / "masks" / path)

    mask("a_kidney_000.png", 5, 25, 5, 25)
    mask("a_kidney_001.png", 15, 35, 15, 35)  # overlaps instance 0: the later instance wins
    mask("a_liver_000.png", 40, 58, 40, 78)
    mask("b_kidney_001.png", 10, 20, 10, 20)
    ds = prepare_dataset(root, tmp_path / "out", PrepareConfig(image_size=80, min_area=4))
    assert ds.manifest["source"]["layout"] == "folder2d"
    assert ds.classes == [{"name": "kidney", "values": [1, 2], "index": 1},
                          {"name": "liver", "values": [3], "index": 2}]
    assert ds.images("a").shape == (1, 80, 80, 3) and ds.images("b").shape == (1, 80, 80)
    assert ds.meta("a")["axis"] == "2d" and ds.meta("a")["valid_hw"] == [60, 80]
    objects = {(o.class_name, o.instance): o for o in ds.objects("a")}
    assert objects[("kidney", 0)].values == (1,) and objects[("kidney", 1)].values == (2,)
    assert objects[("kidney", 1)].area == 400 and objects[("kidney", 0)].area == 400 - 100
    assert objects[("kidney", 1)].box == (15, 15, 35, 35)
    assert ds.labels("a")[0, 20, 20] == 2
    assert [(o.class_name, o.instance, o.values) for o in ds.objects("b")] == [("kidney", 1, (2,))]
    np.testing.assert_array_equal(ds.images("a")[0, :60], np.asarray(Image.open(root / "images" / "a.png")))
    assert not ds.images("a")[0, 60:].any()
    with pytest.raises(ConfigError):
        prepare_dataset(root, tmp_path / "out2", PrepareConfig(window="abdomen"))


def test_real_2d_folder(tmp_path: Path):
    source = REAL / "ct_slices_png"
    if not source.is_dir():
        pytest.skip("real data absent")
    ds = prepare_dataset(source, tmp_path / "out", PrepareConfig(keep_empty_ratio=1.0))
    assert ds.case_ids() == ["amos_0004_75", "amos_0006_90", "amos_0507_31", "s0114_111", "s0619_32"]
    assert {c["split"] for c in ds.manifest["cases"]} == {"train", "val", "test"}
    names = [c["name"] for c in ds.classes]
    assert "liver" in names and "hip_left" in names
    hip_left = ds.classes[names.index("hip_left")]
    assert len(hip_left["values"]) == 2  # two instances, two raw values, one class
    hips = [o for o in ds.objects("s0619_32") if o.class_name == "hip_left"]
    assert sorted(o.instance for o in hips) == [0, 1] and hips[0].values != hips[1].values
    assert ds.objects("amos_0507_31") == []  # no masks: kept as an empty slice
    for cid in ds.case_ids():
        images = ds.images(cid)
        assert images.dtype == np.uint8 and images.shape == (1, 256, 256)
    # s0114_111 is 181 x 258: resized to 180 x 256 and padded
    meta = ds.meta("s0114_111")
    assert meta["source_hw"] == [181, 258] and meta["valid_hw"] == [180, 256]
    assert not ds.images("s0114_111")[0, 180:].any()
    liver = next(o for o in ds.objects("amos_0006_90") if o.class_name == "liver")
    source_mask = np.asarray(Image.open(source / "masks" / "amos_0006_90_liver_000.png")) > 0
    assert abs(liver.area - source_mask.sum() / 4) < 0.05 * liver.area
    without_empty = prepare_dataset(source, tmp_path / "out0", PrepareConfig(keep_empty_ratio=0.0))
    assert "amos_0507_31" not in without_empty.case_ids()
    assert without_empty.manifest["skipped"][0]["case_id"] == "amos_0507_31"


# ----------------------------------------------------------------------------- real NIfTI


def _real_nnunet(tmp_path: Path, labels: dict) -> Path:
    src = REAL / "ct_abdomen_nifti"
    if not (src / "example_ct_sm.nii.gz").exists():
        pytest.skip("real data absent")
    root = tmp_path / "Dataset002_real"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "imagesTr" / "ex_0000.nii.gz").symlink_to(src / "example_ct_sm.nii.gz")
    (root / "labelsTr" / "ex.nii.gz").symlink_to(src / "example_seg.nii.gz")
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": labels,
                                                   "numTraining": 1, "file_ending": ".nii.gz"}))
    return root


def test_real_nifti(tmp_path: Path):
    src = REAL / "ct_abdomen_nifti"
    if not (src / "class_map_total.json").exists():
        pytest.skip("real data absent")
    names = json.loads((src / "class_map_total.json").read_text())["total"]
    few = {"background": 0, **{names[str(v)]: v for v in (1, 2, 3, 5)}}
    raw = _real_nnunet(tmp_path / "few", few)
    with pytest.raises(DatasetError, match="example_seg|ex.nii.gz") as info:  # the other organs are undeclared
        prepare_dataset(raw, tmp_path / "out_few", PrepareConfig())
    assert "values 4, 6, 7" in str(info.value)

    import SimpleITK as sitk

    present = np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(src / "example_seg.nii.gz"))))
    labels = {"background": 0, **{names[str(v)]: int(v) for v in present if v}, "kidneys": [2, 3]}
    raw = _real_nnunet(tmp_path / "all", labels)
    ds = prepare_dataset(raw, tmp_path / "out", PrepareConfig(classes=["liver", "spleen", "kidneys"]))
    meta = ds.meta("ex")
    assert meta["flip_hw"] == [True, True]  # stored RAS-like: flipped to anterior up, patient right on the left
    assert meta["source_hw"] == [101, 122] and meta["pixel_spacing_mm"] == pytest.approx([3 * 101 / 212, 3 * 122 / 256])
    assert ds.images("ex").dtype == np.uint8 and ds.images("ex").shape[1:] == (256, 256)
    both = [s for s in range(ds.images("ex").shape[0])
            if {"liver", "spleen", "kidneys"} <= {o.class_name for o in ds.objects("ex") if o.slice == s}]
    assert both
    s = both[len(both) // 2]
    centre = {o.class_name: ds.object_mask("ex", o).nonzero() for o in ds.objects("ex") if o.slice == s}
    assert centre["liver"][1].mean() < 128 < centre["spleen"][1].mean()  # liver on the image left
    assert centre["kidneys"][0].mean() > centre["liver"][0].mean()  # kidneys posterior: lower in the image
    # the kidneys region holds both kidneys: one object, two raw values
    kidneys = next(o for o in ds.objects("ex") if o.slice == s and o.class_name == "kidneys")
    assert kidneys.values == (2, 3) and set(np.unique(ds.labels("ex")[s][ds.object_mask("ex", kidneys)])) == {2, 3}
    # the model-frame slice maps back onto the source grid exactly where labels are blocky enough
    from samadapt.data.frame import from_model_frame_labels

    back = from_model_frame_labels(np.asarray(ds.labels("ex")[s]), meta["source_hw"])
    source = sitk.GetArrayFromImage(sitk.ReadImage(str(src / "example_seg.nii.gz")))
    expected = orient_slice(source[meta["slice_indices"][s]], tuple(meta["flip_hw"]))
    expected = np.where(np.isin(expected, [1, 2, 3, 5]), expected, 0)
    assert np.mean(back == expected) > 0.99


def test_an_absurd_2d_header_is_refused_before_its_voxels_are_read(tmp_path: Path):
    """A 2D image file counts as one slice: its header alone (4100 x 4100 px, data cut off after the header)
    is refused by the size rule, not read and then reported as a broken file."""
    raw = make_nnunet(tmp_path / "raw", n_cases=1, shape=(4, 16, 16))
    image_path = next((raw / "imagesTr").iterdir())
    flat = tmp_path / "flat.nii"
    SimpleITK.WriteImage(SimpleITK.Image(4100, 4100, SimpleITK.sitkUInt8), str(flat))
    with gzip.open(image_path, "wb") as packed:
        packed.write(flat.read_bytes()[:1024])  # the header and a little data: no voxel read could succeed
    with pytest.raises(InputFileError, match=r"4100x4100 pixels exceeds 4096 per side"):
        prepare_dataset(raw, tmp_path / "out", PrepareConfig(image_size=32))
