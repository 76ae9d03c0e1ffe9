"""Dataset layouts on disk: nnU-Net / Medical Segmentation Decathlon volumes, and folders of 2D slices.

Only names, paths and label definitions are read here; image contents (and label values against
``dataset.json``) are checked when a dataset is prepared.

nnU-Net v2::

    root/dataset.json    {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": [1, 2], ...},
                          "numTraining": N, "file_ending": ".nii.gz"}
    root/imagesTr/<case>_0000.nii.gz, <case>_0001.nii.gz ...   one file per channel
    root/labelsTr/<case>.nii.gz
    root/imagesTs/<case>_0000.nii.gz                          optional, unlabelled

DICOM series as images: a folder ``imagesTr/<case>_0000/`` (or ``imagesTs/...``) holding the slice files
of one series takes the place of the image file; its label is a volume file ``labelsTr/<case><file_ending>``
(e.g. ``"file_ending": ".nrrd"``) on the series' grid. Files and series folders may be mixed.

Medical Segmentation Decathlon (also nnU-Net v1): ``"modality": {"0": "CT"}``, ``"labels": {"0":
"background", "1": "liver"}`` and a ``"training"`` list of ``{"image": "./imagesTr/x.nii.gz", "label":
"./labelsTr/x.nii.gz"}``; image files carry no channel suffix (nnU-Net v1 files with ``_0000`` are found too).
An ``"image"`` entry may name a DICOM series folder (``"./imagesTr/x"``); the case id is the folder's name.

2D folders::

    root/images/<stem>.png
    root/masks/<stem>_<structure>_<k>.png     k: 3-digit instance index; one binary mask per instance
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from samadapt.errors import DatasetError
from samadapt.io.image2d import IMAGE_SUFFIXES


@dataclass(frozen=True)
class LabelClass:
    """A structure to segment: the raw label values that form it (several for nnU-Net region classes)."""

    name: str
    values: tuple[int, ...]


@dataclass(frozen=True)
class VolumeCase:
    """One scan: its channel files (channel 0 first) and its label file (None when unlabelled)."""

    case_id: str
    image_paths: tuple[Path, ...]
    label_path: Path | None


@dataclass
class VolumeDataset:
    """An nnU-Net or MSD dataset: its classes (background excluded) and cases sorted by ``case_id``.

    ``ignore_label`` is nnU-Net v2's ``"ignore"`` value (unannotated voxels), not a class; None if absent.
    """

    root: Path
    name: str
    modality: str
    classes: list[LabelClass]
    cases: list[VolumeCase]
    file_ending: str
    ignore_label: int | None = None


@dataclass(frozen=True)
class MaskInstance:
    """One binary mask file: an instance of a structure in a 2D image."""

    class_name: str
    instance: int
    path: Path


@dataclass
class ImageCase2D:
    """A 2D image and its mask instances, sorted by ``(class_name, instance)``; possibly none."""

    case_id: str
    image_path: Path
    instances: list[MaskInstance]


@dataclass
class Folder2DDataset:
    """A folder of 2D images with one mask file per structure instance."""

    root: Path
    classes: list[str]
    cases: list[ImageCase2D]


# ----------------------------------------------------------------------------------------------- nnU-Net


class _DuplicateKeyError(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKeyError(key)
        seen[key] = value
    return seen


def _load_dataset_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DatasetError(f"{path}: missing; an nnU-Net dataset needs a dataset.json beside imagesTr/ "
                           "(see nnU-Net's dataset format)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_no_duplicate_keys)
    except _DuplicateKeyError as err:
        raise DatasetError(f"{path}: key {err.args[0]!r} appears twice; keep one") from None
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}: invalid JSON ({err.msg} at line {err.lineno}, column {err.colno}); "
                           "fix the syntax") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: cannot be read ({err}); check the file") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: must hold a JSON object with channel_names (or modality) and labels")
    return data


def _channel_names(data: dict[str, Any], key: str, json_path: Path) -> list[str]:
    """Channel names in channel order from ``data[key]`` (``{"0": "CT", "1": "T2"}``)."""
    raw = data.get(key)
    if not isinstance(raw, dict) or not raw:
        raise DatasetError(f"{json_path}: {key!r} must map channel numbers to names, e.g. {{\"0\": \"CT\"}}")
    try:
        channels = {int(k): str(v) for k, v in raw.items()}
    except ValueError:
        raise DatasetError(f"{json_path}: {key!r} keys must be channel numbers \"0\", \"1\", ...") from None
    if sorted(channels) != list(range(len(channels))):
        raise DatasetError(f"{json_path}: {key!r} must number channels 0..{len(channels) - 1} without gaps, "
                           f"got {sorted(channels)}")
    return [channels[i] for i in range(len(channels))]


def _modality(channel0: str) -> str:
    """"CT" and "MR" normalised from any case ("MRI" -> "MR"); other channel names as given."""
    name = channel0.strip()
    if name.upper() == "CT":
        return "CT"
    if name.upper() in ("MR", "MRI"):
        return "MR"
    return name


def _label_value(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    return None


def _label_classes(data: dict[str, Any], json_path: Path) -> tuple[list[LabelClass], int | None]:
    """Classes (background and ``ignore`` excluded) in dataset.json order, and the ignore value."""
    labels = data.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise DatasetError(f"{json_path}: no \"labels\"; map class names to label values, "
                           "e.g. {\"background\": 0, \"liver\": 1}")
    pairs: list[tuple[str, tuple[int, ...]]] = []
    if all(isinstance(v, str) for v in labels.values()):  # MSD, nnU-Net v1: {"0": "background", "1": "liver"}
        for key, name in labels.items():
            try:
                value = int(key)
            except ValueError:
                raise DatasetError(f"{json_path}: label key {key!r} is not an integer value; MSD labels map "
                                   "values to names, e.g. {\"1\": \"liver\"}") from None
            if value < 0:
                raise DatasetError(f"{json_path}: label {name!r} has negative value {value}; use values >= 0")
            pairs.append((name, (value,)))
    else:  # nnU-Net v2: {"background": 0, "liver": [1, 2], "tumor": 2}
        for name, raw in labels.items():
            items = raw if isinstance(raw, list) else [raw]
            values = [_label_value(v) for v in items]
            if not values or any(v is None for v in values):
                raise DatasetError(f"{json_path}: label {name!r} has value {raw!r}; use an integer >= 0 or a "
                                   "list of them (region)")
            pairs.append((name, tuple(dict.fromkeys(values))))
    ignore = None
    classes: list[LabelClass] = []
    single_owner: dict[int, str] = {}
    for name, values in pairs:
        if not name.strip():
            raise DatasetError(f"{json_path}: a label has an empty name; name every class")
        if name == "ignore" and len(values) == 1:
            ignore = values[0]
            continue
        if values == (0,):  # background
            continue
        if any(c.name == name for c in classes):
            raise DatasetError(f"{json_path}: label name {name!r} is used twice; name each class once")
        if len(values) == 1:
            if values[0] in single_owner:
                raise DatasetError(f"{json_path}: labels {single_owner[values[0]]!r} and {name!r} share "
                                   f"value {values[0]}; give each class its own value or make one a region")
            single_owner[values[0]] = name
        classes.append(LabelClass(name, values))
    if not classes:
        raise DatasetError(f"{json_path}: \"labels\" lists no class besides background; add the structures "
                           "to segment")
    return classes, ignore


def _visible_files(folder: Path, ending: str) -> list[Path]:
    """Files in ``folder`` whose name ends with ``ending``, skipping hidden ones (``._x``, ``.DS_Store``)."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.name.endswith(ending))


def _series_folders(folder: Path) -> list[Path]:
    """Subfolders of ``folder`` (DICOM series), skipping hidden ones."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _scan_channel_files(folder: Path, ending: str, n_channels: int) -> dict[str, tuple[Path, ...]]:
    """``{case_id: (channel 0 path, ...)}`` from nnU-Net v2 names ``<case>_<XXXX><ending>``, or DICOM series
    folders ``<case>_<XXXX>``."""
    file_name = re.compile(rf"^(?P<case>.+)_(?P<channel>\d{{4}}){re.escape(ending)}$")
    folder_name = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
    found: dict[str, dict[int, Path]] = defaultdict(dict)
    entries = [(p, file_name) for p in _visible_files(folder, ending)] + [
        (p, folder_name) for p in _series_folders(folder)]
    for path, pattern in entries:
        match = pattern.match(path.name)
        if match is None:
            kind = f"images are named <case>_0000{ending}" if path.is_file() else (
                "DICOM series folders are named <case>_0000")
            raise DatasetError(f"{path}: name lacks the channel suffix; nnU-Net v2 {kind}")
        channel = int(match["channel"])
        if channel >= n_channels:
            raise DatasetError(f"{path}: channel {channel} is not declared in dataset.json channel_names "
                               f"({n_channels} channels); rename it or declare the channel")
        if channel in found[match["case"]]:
            raise DatasetError(f"{path}: channel {channel} of case {match['case']!r} is also "
                               f"{found[match['case']][channel]}; keep one")
        found[match["case"]][channel] = path
    cases: dict[str, tuple[Path, ...]] = {}
    for case_id, channels in found.items():
        for channel in range(n_channels):
            if channel not in channels:
                missing = folder / f"{case_id}_{channel:04d}{ending}"
                raise DatasetError(f"{missing}: missing; case {case_id!r} needs all {n_channels} channels "
                                   "declared in dataset.json")
        cases[case_id] = tuple(channels[c] for c in range(n_channels))
    return cases


def _pair_with_labels(images: dict[str, tuple[Path, ...]], labels_dir: Path, ending: str,
                      images_dir: Path) -> list[VolumeCase]:
    if not labels_dir.is_dir():
        raise DatasetError(f"{labels_dir}: missing; put one label file per training image there")
    labels = {p.name[: -len(ending)]: p for p in _visible_files(labels_dir, ending)}
    for case_id in sorted(images):
        if case_id not in labels:
            raise DatasetError(f"{images[case_id][0]}: has no label {labels_dir / (case_id + ending)}; "
                               "add the label or move the image to imagesTs")
    for case_id in sorted(labels):
        if case_id not in images:
            raise DatasetError(f"{labels[case_id]}: has no image in {images_dir}; "
                               "add the image or remove the label")
    return [VolumeCase(c, images[c], labels[c]) for c in sorted(images)]


def _read_v2_cases(root: Path, json_path: Path, data: dict[str, Any], n_channels: int) -> tuple[
        list[VolumeCase], list[VolumeCase], str]:
    ending = data.get("file_ending")
    if not isinstance(ending, str) or not ending.startswith("."):
        raise DatasetError(f"{json_path}: needs \"file_ending\" (e.g. \".nii.gz\"), "
                           "the suffix of its image files")
    images_dir = root / "imagesTr"
    if not images_dir.is_dir():
        raise DatasetError(f"{images_dir}: missing; put the training images <case>_0000{ending} there")
    train_images = _scan_channel_files(images_dir, ending, n_channels)
    if not train_images:
        raise DatasetError(f"{images_dir}: no training images named <case>_0000{ending}; add cases or fix "
                           f"file_ending in {json_path.name}")
    train = _pair_with_labels(train_images, root / "labelsTr", ending, images_dir)
    test: list[VolumeCase] = []
    if (root / "imagesTs").is_dir():
        test_images = _scan_channel_files(root / "imagesTs", ending, n_channels)
        test = [VolumeCase(c, test_images[c], None) for c in sorted(test_images)]
    return train, test, ending


def _file_ending(name: str) -> str:
    for double in (".nii.gz", ".nrrd.gz"):
        if name.lower().endswith(double):
            return name[-len(double):]
    return Path(name).suffix


def _msd_image_files(root: Path, relative: str, n_channels: int,
                     json_path: Path) -> tuple[str, tuple[Path, ...]]:
    """Case id and channel files of an MSD image entry; nnU-Net v1 ``_0000`` channel files are accepted."""
    path = root / relative
    if path.is_dir():  # a DICOM series
        return path.name, (path,)
    ending = _file_ending(path.name)
    case_id = path.name[: -len(ending)] if ending else path.name
    if path.is_file():
        return case_id, (path,)
    channels = tuple(path.with_name(f"{case_id}_{c:04d}{ending}") for c in range(n_channels))
    if all(p.is_file() for p in channels):
        return case_id, channels
    raise DatasetError(f"{path}: listed in {json_path.name} but missing; add the file or remove its entry")


def _entry_path(entry: Any, key: str, json_path: Path, section: str) -> str:
    value = entry.get(key) if isinstance(entry, dict) else (entry if key == "image" else None)
    if not isinstance(value, str) or not value:
        raise DatasetError(f"{json_path}: an entry of {section!r} lacks {key!r}; each needs "
                           "{\"image\": \"./imagesTr/x.nii.gz\", \"label\": \"./labelsTr/x.nii.gz\"}")
    return value


def _read_msd_cases(root: Path, json_path: Path, data: dict[str, Any], n_channels: int) -> tuple[
        list[VolumeCase], list[VolumeCase], str]:
    training = data.get("training")
    if not isinstance(training, list) or not training:
        raise DatasetError(f"{json_path}: no \"training\" list; list the cases as "
                           "{\"image\": \"./imagesTr/x.nii.gz\", \"label\": \"./labelsTr/x.nii.gz\"}")
    train: list[VolumeCase] = []
    for entry in training:
        case_id, images = _msd_image_files(root, _entry_path(entry, "image", json_path, "training"),
                                           n_channels, json_path)
        label = root / _entry_path(entry, "label", json_path, "training")
        if not label.is_file():
            raise DatasetError(f"{label}: listed in {json_path.name} but missing; "
                               "add the label or remove its entry")
        train.append(VolumeCase(case_id, images, label))
    first = train[0].image_paths[0]
    ending = _file_ending((train[0].label_path if first.is_dir() else first).name)  # a DICOM folder has none
    test: list[VolumeCase] = []
    for entry in data.get("test") or []:
        case_id, images = _msd_image_files(root, _entry_path(entry, "image", json_path, "test"),
                                           n_channels, json_path)
        test.append(VolumeCase(case_id, images, None))
    # Files in imagesTr / labelsTr that the training list does not mention.
    listed_images = {p.resolve() for case in train for p in case.image_paths}
    listed_labels = {case.label_path.resolve() for case in train if case.label_path is not None}
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    label_names = {p.name for p in _visible_files(labels_dir, ending)} if labels_dir.is_dir() else set()
    if images_dir.is_dir():
        for path in _visible_files(images_dir, ending):
            if path.resolve() not in listed_images:
                channel_file = re.search(rf"_\d{{4}}{re.escape(ending)}$", path.name)
                if path.name not in label_names and not channel_file:
                    raise DatasetError(f"{path}: has no label in {labels_dir}; "
                                       "add the label or move the image to imagesTs")
                raise DatasetError(f"{path}: is not listed in {json_path.name} \"training\"; "
                                   "add it or remove it")
    if labels_dir.is_dir():
        for path in _visible_files(labels_dir, ending):
            if path.resolve() not in listed_labels:
                raise DatasetError(f"{path}: has no image listed in {json_path.name} \"training\"; "
                                   "add the image or remove the label")
    return train, test, ending


def read_nnunet_dataset(root: str | os.PathLike[str]) -> VolumeDataset:
    """Read an nnU-Net v2 or MSD dataset folder (layouts in the module docstring).

    Cases come from imagesTr with their labelsTr file, plus imagesTs with ``label_path=None``, all
    sorted by ``case_id``; ``image_paths`` holds one file per channel, channel 0 first (a single file for
    MSD, whose multi-channel images are 4D). Raises :class:`DatasetError` naming the file for a missing or
    invalid dataset.json, no classes, an image without a label or a label without an image, no cases,
    duplicate case ids or a ``numTraining`` that disagrees with imagesTr.
    """
    root = Path(root)
    json_path = root / "dataset.json"
    data = _load_dataset_json(json_path)
    if "channel_names" in data:
        channels = _channel_names(data, "channel_names", json_path)
        reader = _read_v2_cases
    elif "modality" in data:
        channels = _channel_names(data, "modality", json_path)
        reader = _read_msd_cases
    else:
        raise DatasetError(f"{json_path}: has neither \"channel_names\" (nnU-Net v2) nor \"modality\" (MSD); "
                           "add e.g. \"channel_names\": {\"0\": \"CT\"}")
    classes, ignore = _label_classes(data, json_path)
    train, test, ending = reader(root, json_path, data, len(channels))
    seen: dict[str, VolumeCase] = {}
    for case in train + test:
        if case.case_id in seen:
            raise DatasetError(f"{case.image_paths[0]}: case id {case.case_id!r} is used twice (also "
                               f"{seen[case.case_id].image_paths[0]}); rename one")
        seen[case.case_id] = case
    declared = data.get("numTraining")
    if declared is not None and declared != len(train):
        raise DatasetError(f"{json_path}: numTraining is {declared} but {len(train)} training cases were "
                           "found; fix numTraining or add the missing cases")
    name = data.get("name")
    return VolumeDataset(
        root=root,
        name=str(name) if name else root.name,
        modality=_modality(channels[0]),
        classes=classes,
        cases=sorted(train + test, key=lambda c: c.case_id),
        file_ending=ending,
        ignore_label=ignore,
    )


# ------------------------------------------------------------------------------------------ 2D folders

_MASK_NAME = re.compile(r"^(?P<rest>.+)_(?P<instance>\d{3})$")


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


def _match_image(rest: str, stems: set[str]) -> tuple[str, str] | None:
    """``(image stem, structure)`` for ``<stem>_<structure>`` with the longest matching stem."""
    parts = rest.split("_")
    for cut in range(len(parts) - 1, 0, -1):
        stem = "_".join(parts[:cut])
        if stem in stems:
            return stem, "_".join(parts[cut:])
    return None


def read_folder_2d(root: str | os.PathLike[str], images: str = "images",
                   masks: str = "masks") -> Folder2DDataset:
    """Read a folder of 2D images ``<images>/<stem>.png`` with masks ``<masks>/<stem>_<structure>_<k>.png``.

    ``k`` is a 3-digit instance index; structure names may contain underscores. Each mask belongs to the
    image with the longest stem that prefixes its name. Images without masks are kept (no instances).
    Raises :class:`DatasetError` naming the file for missing folders, no images, two images with one stem,
    a mask name without instance index, a mask matching no image, or the same instance twice.
    """
    root = Path(root)
    images_dir, masks_dir = root / images, root / masks
    for folder, what in ((images_dir, "images"), (masks_dir, "masks")):
        if not folder.is_dir():
            raise DatasetError(f"{folder}: missing; a 2D dataset needs {images}/<stem>.png and "
                               f"{masks}/<stem>_<structure>_000.png ({what} folder)")
    image_paths: dict[str, Path] = {}
    for path in _image_files(images_dir):
        if path.stem in image_paths:
            raise DatasetError(f"{path}: same case id {path.stem!r} as {image_paths[path.stem]}; keep one")
        image_paths[path.stem] = path
    if not image_paths:
        raise DatasetError(f"{images_dir}: no images ({', '.join(IMAGE_SUFFIXES)}); add them or point to "
                           "the right folder")
    stems = set(image_paths)
    instances: dict[str, dict[tuple[str, int], MaskInstance]] = {stem: {} for stem in stems}
    for path in _image_files(masks_dir):
        named = _MASK_NAME.match(path.stem)
        if named is None:
            raise DatasetError(f"{path}: mask names must be <image>_<structure>_<k>{path.suffix} with a "
                               "3-digit instance index k (e.g. _000); rename it")
        matched = _match_image(named["rest"], stems)
        if matched is None:
            raise DatasetError(f"{path}: matches no image in {images_dir} (expected "
                               "<image>_<structure>_<k>); add its image or remove the mask")
        stem, structure = matched
        key = (structure, int(named["instance"]))
        if key in instances[stem]:
            raise DatasetError(f"{path}: same instance as {instances[stem][key].path}; keep one")
        instances[stem][key] = MaskInstance(structure, key[1], path)
    cases = [ImageCase2D(stem, image_paths[stem], [found[k] for k in sorted(found)])
             for stem, found in sorted(instances.items())]
    classes = sorted({inst.class_name for case in cases for inst in case.instances})
    return Folder2DDataset(root=root, classes=classes, cases=cases)


def detect_layout(root: str | os.PathLike[str]) -> str:
    """``"nnunet"`` (dataset.json + imagesTr/) or ``"folder2d"`` (images/ + masks/).

    Raises :class:`DatasetError` naming ``root`` for anything else.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such dataset folder; check the path")
    if (root / "dataset.json").is_file() and (root / "imagesTr").is_dir():
        return "nnunet"
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return "folder2d"
    raise DatasetError(f"{root}: unknown dataset layout; expected dataset.json + imagesTr/ (nnU-Net, MSD) or "
                       "images/ + masks/ (2D slices)")
