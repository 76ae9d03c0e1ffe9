"""Dataset layouts: nnU-Net v2, MSD (and nnU-Net v1) fixtures, 2D folders (real and synthetic), errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from samadapt.errors import DatasetError
from samadapt.io.layouts import (
    LabelClass,
    MaskInstance,
    detect_layout,
    read_folder_2d,
    read_nnunet_dataset,
)
from samadapt.io.volume import Geometry, check_same_grid, read_volume, write_volume

REAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "real"
GEOMETRY = Geometry((6, 5, 4), (1.0, 1.0, 2.5), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


def _volume(path: Path, value: int = 0) -> Path:
    """A tiny 4x5x6 volume on GEOMETRY."""
    array = np.full((4, 5, 6), value, np.int16)
    array[1:3, 1:4, 2:5] = value + 1
    return write_volume(array, GEOMETRY, path)


def _write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    return path


def _nnunet_v2(root: Path, cases: tuple[str, ...] = ("liver_002", "liver_000", "liver_001"),
               test_cases: tuple[str, ...] = ("liver_100",), channels: int = 2,
               labels: dict[str, Any] | None = None, **extra: Any) -> Path:
    channel_names = {str(c): name for c, name in enumerate(["CT", "noNorm", "T2"][:channels])}
    data = {"channel_names": channel_names,
            "labels": labels or {"background": 0, "liver": [1, 2], "liver_tumor": 2},
            "numTraining": len(cases), "file_ending": ".nii.gz", "name": "Dataset001_Liver"}
    data.update(extra)
    _write_json(root / "dataset.json", data)
    (root / "imagesTr").mkdir()
    (root / "labelsTr").mkdir()
    for case in cases:
        for c in range(channels):
            _volume(root / "imagesTr" / f"{case}_{c:04d}.nii.gz", value=10 * c)
        _volume(root / "labelsTr" / f"{case}.nii.gz")
    for case in test_cases:
        for c in range(channels):
            _volume(root / "imagesTs" / f"{case}_{c:04d}.nii.gz")
    (root / "imagesTr" / ".DS_Store").write_bytes(b"\0")  # hidden junk is ignored
    return root


def _msd(root: Path, cases: tuple[str, ...] = ("liver_1", "liver_0"), test_cases: tuple[str, ...] = ("liver_9",),
         channel_files: bool = False) -> Path:
    data = {
        "name": "Liver", "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "liver", "2": "cancer"},
        "numTraining": len(cases), "numTest": len(test_cases),
        "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in cases],
        "test": [f"./imagesTs/{c}.nii.gz" for c in test_cases],
    }
    _write_json(root / "dataset.json", data)
    suffix = "_0000" if channel_files else ""
    for case in cases:
        _volume(root / "imagesTr" / f"{case}{suffix}.nii.gz")
        _volume(root / "labelsTr" / f"{case}.nii.gz")
        (root / "imagesTr" / f"._{case}.nii.gz").write_bytes(b"\0")  # macOS junk shipped with MSD tarballs
    for case in test_cases:
        _volume(root / "imagesTs" / f"{case}{suffix}.nii.gz")
    return root


# ------------------------------------------------------------------------------------------ nnU-Net v2


def test_nnunet_v2_dataset(tmp_path: Path) -> None:
    root = _nnunet_v2(tmp_path / "Dataset001_Liver")
    dataset = read_nnunet_dataset(root)
    assert dataset.root == root
    assert dataset.name == "Dataset001_Liver"
    assert dataset.modality == "CT"
    assert dataset.file_ending == ".nii.gz"
    assert dataset.classes == [LabelClass("liver", (1, 2)), LabelClass("liver_tumor", (2,))]  # region first
    assert dataset.ignore_label is None
    assert [c.case_id for c in dataset.cases] == ["liver_000", "liver_001", "liver_002", "liver_100"]
    first = dataset.cases[0]
    assert first.image_paths == (root / "imagesTr/liver_000_0000.nii.gz", root / "imagesTr/liver_000_0001.nii.gz")
    assert first.label_path == root / "labelsTr/liver_000.nii.gz"
    test_case = dataset.cases[-1]
    assert test_case.label_path is None
    assert test_case.image_paths[0] == root / "imagesTs/liver_100_0000.nii.gz"
    for case in dataset.cases[:3]:  # the files are real volumes on one grid
        check_same_grid(read_volume(case.image_paths[0]), read_volume(case.label_path))
    assert float(read_volume(first.image_paths[1]).array.max()) == 11.0  # channel 1 is the second file
    assert detect_layout(root) == "nnunet"


def test_nnunet_v2_ignore_label_and_modality_names(tmp_path: Path) -> None:
    labels = {"background": 0, "kidney": 1, "cyst": 2, "ignore": 3}
    root = _nnunet_v2(tmp_path / "ds", test_cases=(), channels=1, labels=labels,
                      channel_names={"0": "mri"})
    dataset = read_nnunet_dataset(root)
    assert dataset.modality == "MR"
    assert dataset.classes == [LabelClass("kidney", (1,)), LabelClass("cyst", (2,))]
    assert dataset.ignore_label == 3
    assert [c.label_path is not None for c in dataset.cases] == [True, True, True]
    for name, expected in (("ct", "CT"), ("MR", "MR"), ("T2", "T2"), ("rescale_to_0_1", "rescale_to_0_1")):
        data = json.loads((root / "dataset.json").read_text())
        data["channel_names"] = {"0": name}
        _write_json(root / "dataset.json", data)
        assert read_nnunet_dataset(root).modality == expected


def test_nnunet_name_defaults_to_the_folder(tmp_path: Path) -> None:
    root = _nnunet_v2(tmp_path / "Dataset002_Heart", channels=1, name="")
    assert read_nnunet_dataset(root).name == "Dataset002_Heart"


def test_nnunet_over_real_volumes(tmp_path: Path) -> None:
    """The real abdomen CT and MR with their TotalSegmentator labels, linked into an nnU-Net layout."""
    source = REAL / "ct_abdomen_nifti"
    if not source.is_dir():
        pytest.skip(f"real data not found at {source}")
    class_map = json.loads((source / "class_map_total.json").read_text())["total"]
    root = tmp_path / "Dataset010_Abdomen"
    for folder in ("imagesTr", "labelsTr"):
        (root / folder).mkdir(parents=True)
    (root / "imagesTr/abd_ct_0000.nii.gz").symlink_to(source / "example_ct_sm.nii.gz")
    (root / "labelsTr/abd_ct.nii.gz").symlink_to(source / "example_seg.nii.gz")
    labels = {"background": 0, **{name: int(v) for v, name in class_map.items()}}
    _write_json(root / "dataset.json", {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 1,
                                        "file_ending": ".nii.gz"})
    dataset = read_nnunet_dataset(root)
    assert len(dataset.classes) == len(class_map) == 117
    assert dataset.classes[0] == LabelClass("spleen", (1,))
    (case,) = dataset.cases
    image, label = read_volume(case.image_paths[0]), read_volume(case.label_path)
    check_same_grid(image, label)
    known = {v for c in dataset.classes for v in c.values}
    assert set(np.unique(label.array).tolist()) - {0} <= known


# ------------------------------------------------------------------------------------------------- MSD


def test_msd_dataset(tmp_path: Path) -> None:
    root = _msd(tmp_path / "Task03_Liver")
    dataset = read_nnunet_dataset(root)
    assert dataset.name == "Liver"
    assert dataset.modality == "CT"
    assert dataset.classes == [LabelClass("liver", (1,)), LabelClass("cancer", (2,))]
    assert dataset.file_ending == ".nii.gz"
    assert [c.case_id for c in dataset.cases] == ["liver_0", "liver_1", "liver_9"]
    assert dataset.cases[0].image_paths == (root / "./imagesTr/liver_0.nii.gz",)
    assert dataset.cases[0].label_path == root / "labelsTr/liver_0.nii.gz"
    assert dataset.cases[2].label_path is None
    assert detect_layout(root) == "nnunet"


def test_nnunet_v1_msd_json_with_channel_files(tmp_path: Path) -> None:
    root = _msd(tmp_path / "Task003_Liver", channel_files=True)
    dataset = read_nnunet_dataset(root)
    assert dataset.cases[0].image_paths == (root / "imagesTr/liver_0_0000.nii.gz",)
    assert dataset.cases[2].image_paths == (root / "imagesTs/liver_9_0000.nii.gz",)


# ----------------------------------------------------------------------------------------- nnU-Net errors


def _edit_json(root: Path, **changes: Any) -> None:
    data = json.loads((root / "dataset.json").read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    _write_json(root / "dataset.json", data)


def _fails(root: Path, pattern: str) -> str:
    with pytest.raises(DatasetError, match=pattern) as info:
        read_nnunet_dataset(root)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_dataset_json_errors(tmp_path: Path) -> None:
    root = _nnunet_v2(tmp_path / "ds", channels=1)
    json_path = root / "dataset.json"
    good = json_path.read_text()

    json_path.unlink()
    _fails(root, "dataset.json: missing")
    json_path.write_text('{"channel_names": {"0": "CT"}, "labels": ')
    _fails(root, r"dataset.json: invalid JSON \(.* line 1")
    json_path.write_text('{"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1, "a": 2}}')
    _fails(root, "dataset.json: key 'a' appears twice")
    json_path.write_text("[1, 2]")
    _fails(root, "dataset.json: must hold a JSON object")

    json_path.write_text(good)
    _edit_json(root, labels={"background": 0})
    _fails(root, "dataset.json: \"labels\" lists no class")
    _edit_json(root, labels=None)
    _fails(root, "dataset.json: no \"labels\"")
    _edit_json(root, labels={"background": 0, "liver": -1})
    _fails(root, "dataset.json: label 'liver' has value -1")
    _edit_json(root, labels={"background": 0, "liver": "1"})
    _fails(root, "dataset.json: label 'liver' has value '1'")
    _edit_json(root, labels={"background": 0, "liver": 1, "spleen": 1})
    _fails(root, "dataset.json: labels 'liver' and 'spleen' share value 1")
    _edit_json(root, labels={"background": 0, "liver": 1})
    _edit_json(root, channel_names=None)
    _fails(root, "dataset.json: has neither \"channel_names\"")
    _edit_json(root, channel_names={"1": "CT"})
    _fails(root, "dataset.json: 'channel_names' must number channels")
    _edit_json(root, channel_names={"0": "CT"}, file_ending=None)
    _fails(root, "dataset.json: needs \"file_ending\"")
    _edit_json(root, file_ending=".nrrd")
    _fails(root, "imagesTr: no training images named <case>_0000.nrrd")
    _edit_json(root, file_ending=".nii.gz", numTraining=5)
    _fails(root, "dataset.json: numTraining is 5 but 3 training cases")
    _edit_json(root, numTraining=3)
    assert len(read_nnunet_dataset(root).cases) == 4


def test_image_and_label_pairing_errors(tmp_path: Path) -> None:
    root = _nnunet_v2(tmp_path / "ds", channels=2, test_cases=())
    (root / "labelsTr/liver_001.nii.gz").unlink()
    _fails(root, "imagesTr/liver_001_0000.nii.gz: has no label .*labelsTr/liver_001.nii.gz")

    root = _nnunet_v2(tmp_path / "ds2", channels=2, test_cases=())
    _volume(root / "labelsTr/liver_007.nii.gz")
    _fails(root, "labelsTr/liver_007.nii.gz: has no image")

    root = _nnunet_v2(tmp_path / "ds3", channels=2, test_cases=())
    (root / "imagesTr/liver_002_0001.nii.gz").unlink()
    _fails(root, "imagesTr/liver_002_0001.nii.gz: missing; case 'liver_002' needs all 2 channels")

    root = _nnunet_v2(tmp_path / "ds4", channels=1, test_cases=())
    _volume(root / "imagesTr/liver_003.nii.gz")
    _fails(root, "imagesTr/liver_003.nii.gz: name lacks the channel suffix")

    root = _nnunet_v2(tmp_path / "ds5", channels=1, test_cases=())
    _volume(root / "imagesTr/liver_000_0001.nii.gz")
    _fails(root, "imagesTr/liver_000_0001.nii.gz: channel 1 is not declared")

    root = _nnunet_v2(tmp_path / "ds6", channels=1, test_cases=())
    for path in (root / "labelsTr").iterdir():
        path.unlink()
    (root / "labelsTr").rmdir()
    _fails(root, "labelsTr: missing")


def test_no_cases_and_duplicate_case_ids(tmp_path: Path) -> None:
    root = _nnunet_v2(tmp_path / "empty", cases=(), test_cases=(), channels=1)
    _fails(root, "imagesTr: no training images")

    root = _nnunet_v2(tmp_path / "dup", cases=("a", "b"), test_cases=("b",), channels=1)
    message = _fails(root, "imagesTs/b_0000.nii.gz: case id 'b' is used twice")
    assert "imagesTr/b_0000.nii.gz" in message

    root = _msd(tmp_path / "msd_dup", cases=("x", "x"), test_cases=())
    _fails(root, "imagesTr/x.nii.gz: case id 'x' is used twice")


def test_msd_errors(tmp_path: Path) -> None:
    root = _msd(tmp_path / "a")
    (root / "labelsTr/liver_1.nii.gz").unlink()
    _fails(root, "labelsTr/liver_1.nii.gz: listed in dataset.json but missing")

    root = _msd(tmp_path / "b")
    (root / "imagesTr/liver_0.nii.gz").unlink()
    _fails(root, "imagesTr/liver_0.nii.gz: listed in dataset.json but missing")

    root = _msd(tmp_path / "c")
    _volume(root / "imagesTr/liver_5.nii.gz")
    _fails(root, "imagesTr/liver_5.nii.gz: has no label")

    root = _msd(tmp_path / "d")
    _volume(root / "imagesTr/liver_5.nii.gz")
    _volume(root / "labelsTr/liver_5.nii.gz")
    _fails(root, "imagesTr/liver_5.nii.gz: is not listed in dataset.json \"training\"")

    root = _msd(tmp_path / "e")
    _volume(root / "labelsTr/liver_6.nii.gz")
    _fails(root, "labelsTr/liver_6.nii.gz: has no image listed")

    root = _msd(tmp_path / "f")
    _edit_json(root, training=[{"image": "./imagesTr/liver_0.nii.gz"}])
    _fails(root, "dataset.json: an entry of 'training' lacks 'label'")
    _edit_json(root, training=None)
    _fails(root, "dataset.json: no \"training\" list")
    _edit_json(root, labels={"0": "background", "one": "liver"})
    _fails(root, "dataset.json: label key 'one' is not an integer")


# ------------------------------------------------------------------------------------------ 2D folders


def test_real_png_folder_matches_its_index_files() -> None:
    root = REAL / "ct_slices_png"
    if not root.is_dir():
        pytest.skip(f"real data not found at {root}")
    dataset = read_folder_2d(root)
    assert detect_layout(root) == "folder2d"
    cases = {c.case_id: c for c in dataset.cases}
    assert list(cases) == ["amos_0004_75", "amos_0006_90", "amos_0507_31", "s0114_111", "s0619_32"]
    assert cases["amos_0507_31"].instances == []  # kept although it has no masks
    assert all(c.image_path == root / "images" / f"{c.case_id}.png" for c in dataset.cases)
    # Every mask file belongs to exactly one case, and to the one the dataset's own index files name.
    found = {inst.path.name: case.image_path.name for case in dataset.cases for inst in case.instances}
    assert set(found) == {p.name for p in (root / "masks").glob("*.png")}
    train = json.loads((root / "image2label_train.json").read_text())
    test = json.loads((root / "label2image_test.json").read_text())
    index = {Path(m).name: Path(img).name for img, masks in train.items() for m in masks}
    index.update({Path(m).name: Path(img).name for m, img in test.items()})
    assert index == found
    amos = cases["amos_0004_75"]
    assert amos.instances == [
        MaskInstance("aorta", 0, root / "masks/amos_0004_75_aorta_000.png"),
        MaskInstance("inferior_vena_cava", 0, root / "masks/amos_0004_75_inferior_vena_cava_000.png"),
        MaskInstance("liver", 0, root / "masks/amos_0004_75_liver_000.png"),
    ]
    hips = [(i.class_name, i.instance) for i in cases["s0619_32"].instances if i.class_name.startswith("hip")]
    assert hips == [("hip_left", 0), ("hip_left", 1), ("hip_right", 0), ("hip_right", 1)]
    assert "vertebrae_T9" in dataset.classes and "rib_left_9" in dataset.classes
    assert dataset.classes == sorted(dataset.classes) and len(dataset.classes) == 24


def _folder_2d(root: Path, images: list[str], masks: list[str], image_dir: str = "images",
               mask_dir: str = "masks") -> Path:
    (root / image_dir).mkdir(parents=True)
    (root / mask_dir).mkdir(parents=True)
    for name in images:
        (root / image_dir / name).write_bytes(b"")  # contents are read later, not by the layout
    for name in masks:
        (root / mask_dir / name).write_bytes(b"")
    return root


def test_folder_2d_longest_stem_wins(tmp_path: Path) -> None:
    root = _folder_2d(tmp_path / "d", ["a.png", "a_b.png", "c.jpg", ".hidden.png"],
                      ["a_b_liver_000.png", "a_liver_left_001.png", "a_liver_left_000.png", "c_x_y_z_012.png",
                       "notes.txt"])
    dataset = read_folder_2d(root)
    cases = {c.case_id: [(i.class_name, i.instance) for i in c.instances] for c in dataset.cases}
    assert cases == {"a": [("liver_left", 0), ("liver_left", 1)], "a_b": [("liver", 0)], "c": [("x_y_z", 12)]}
    assert dataset.classes == ["liver", "liver_left", "x_y_z"]
    custom = _folder_2d(tmp_path / "e", ["s1.tif"], ["s1_lesion_000.png"], image_dir="img", mask_dir="lbl")
    assert read_folder_2d(custom, images="img", masks="lbl").cases[0].instances[0].class_name == "lesion"


def test_folder_2d_errors(tmp_path: Path) -> None:
    def fails(root: Path, pattern: str) -> None:
        with pytest.raises(DatasetError, match=pattern) as info:
            read_folder_2d(root)
        assert "\n" not in str(info.value)

    fails(_folder_2d(tmp_path / "a", ["img1.png"], ["img2_liver_000.png"]),
          "masks/img2_liver_000.png: matches no image")
    fails(_folder_2d(tmp_path / "b", ["img1.png"], ["img1_liver.png"]),
          "masks/img1_liver.png: mask names must be <image>_<structure>_<k>")
    fails(_folder_2d(tmp_path / "c", ["img1.png", "img1.jpg"], []), "img1.png: same case id 'img1'")
    fails(_folder_2d(tmp_path / "d", ["img1.png"], ["img1_liver_000.png", "img1_liver_000.tif"]),
          "img1_liver_000.tif: same instance as")
    fails(_folder_2d(tmp_path / "e", [], []), "images: no images")
    (tmp_path / "f" / "images").mkdir(parents=True)
    fails(tmp_path / "f", "f/masks: missing")


def test_detect_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="nowhere: no such dataset folder"):
        detect_layout(tmp_path / "nowhere")
    (tmp_path / "odd" / "imagesTr").mkdir(parents=True)  # no dataset.json
    with pytest.raises(DatasetError, match="odd: unknown dataset layout"):
        detect_layout(tmp_path / "odd")
