"""``samadapt prepare``: a raw dataset (nnU-Net volumes or a 2D folder) -> a prepared dataset.

For every case: read image and label through :mod:`samadapt.io`, validate them, window the intensities to
``uint8`` (:mod:`samadapt.data.windowing`), cut 2D slices along the chosen axis, put each slice into SAM's
model frame (:mod:`samadapt.data.frame`) and list its objects; slices without objects are kept only for a
seeded fraction ``keep_empty_ratio``. Each case is written as one atomic shard; the manifest comes last.
See :mod:`samadapt.data.prepared` for the format.

Slicing and orientation (which array axis is cut, and the flips that put each slice into radiological
display orientation, ``meta["flip_hw"]``): :mod:`samadapt.data.orientation`.

Intensities. Volumes are windowed as a whole (``--window``; ``auto`` = abdomen for CT, foreground
percentiles otherwise); multi-channel nnU-Net cases use channel 0 only. 2D folders: ``auto`` passes 8-bit
images through unchanged (they are already windowed) and stretches 16-bit ones by percentiles; HU windows
are refused for 8-bit images.

Objects. nnU-Net volumes: one object per class per slice (``instance`` 0, ``values`` = the class's label
values, so a region class such as liver = [1, 2] contains its lesion). 2D folders: every (structure,
instance) pair of the dataset gets its own raw label value 1..K (classes in the dataset's order, instances
ascending); a class's ``values`` are those of all its instances and each instance is its own object.
Overlapping instance masks: the later one (higher value) wins the overlapping pixels.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from samadapt.data.frame import frame_shape, model_frame_spacing, to_model_frame_image, to_model_frame_labels
from samadapt.data.orientation import AXES, MAX_SIDE, MAX_SLICES, slice_flips, slice_spacings, take_slice
from samadapt.data.prepare_config import PrepareConfig
from samadapt.data.prepared import (
    FORMAT_VERSION,
    PREPARE_MARKER,
    PreparedDataset,
    SliceObject,
    case_dir,
    case_is_complete,
    check_case,
    dataset_hashes,
    mask_box,
    source_signature,
    write_case,
    write_manifest,
)
from samadapt.data.windowing import Window, parse_window
from samadapt.errors import ConfigError, DatasetError, GeometryMismatchError, InputFileError, storage_error
from samadapt.io.atomic import write_json_atomic
from samadapt.io.volume import Geometry, check_path_encodable, check_same_grid, read_header, read_volume
from samadapt.progress import Progress
from samadapt.settings import config_to_dict, save_config

# ----------------------------------------------------------------------------- plans


@dataclass(frozen=True)
class ClassSpec:
    """A class of the prepared dataset: ``index`` is 1-based in manifest order."""

    name: str
    values: tuple[int, ...]
    index: int

    def to_dict(self) -> dict:
        return {"name": self.name, "values": list(self.values), "index": self.index}


def _select_classes(available: list[tuple[str, tuple[int, ...]]], wanted: list[str] | None,
                    source: Path) -> list[ClassSpec]:
    names = [name for name, _ in available]
    if wanted is not None:
        unknown = [w for w in wanted if w not in names]
        if unknown:
            raise ConfigError(f"classes {', '.join(unknown)} are not in {source}; known: {', '.join(names)}")
    chosen = [(n, v) for n, v in available if wanted is None or n in wanted]
    return [ClassSpec(name, tuple(int(x) for x in values), i + 1) for i, (name, values) in enumerate(chosen)]


def _check_2d_side(path: Path, shape: tuple[int, ...]) -> None:
    if max(shape) > MAX_SIDE:
        raise InputFileError(f"{path}: a slice of {shape[0]}x{shape[1]} pixels exceeds {MAX_SIDE} per side; "
                             "downsample it first")


def _check_volume_header(path: Path, axis: str) -> None:
    """Refuse absurd volume sizes from the file header, before reading the voxels (files, of any dimension:
    a 2D file is one slice; folders and unreadable headers are checked once read)."""
    check_path_encodable(path)
    reader = read_header(path)
    if reader is not None:
        size = tuple(reader.GetSize()) + (1,) * (3 - reader.GetDimension())
        _check_volume_size(path, tuple(int(s) for s in reversed(size[:3])), axis)


def _check_volume_size(path: Path, zyx: tuple[int, ...], axis: str) -> None:
    slicing = AXES[axis]
    n_slices = zyx[slicing]
    in_plane = tuple(s for a, s in enumerate(zyx) if a != slicing)
    if n_slices > MAX_SLICES:
        raise InputFileError(f"{path}: {n_slices} {axis} slices exceed {MAX_SLICES}; "
                             "crop or resample the volume")
    _check_2d_side(path, in_plane)


def _keep_empty(case_id: str, n_empty: int, ratio: float, seed: int) -> np.ndarray:
    """Indices (into the list of empty slices) of the ones to keep: ``floor(ratio * n + u)`` of them."""
    rng = np.random.default_rng([seed, zlib.crc32(case_id.encode())])
    k = min(n_empty, int(np.floor(ratio * n_empty + rng.random())))
    return np.sort(rng.choice(n_empty, size=k, replace=False)) if k else np.zeros(0, dtype=int)


def assign_splits(case_ids: list[str], fractions: tuple[float, float, float], seed: int,
                  groups: dict[str, str] | None = None) -> dict[str, str]:
    """Train/val/test split of cases, deterministic from ``seed``; with ``groups`` (case id -> group, e.g. the
    patient), whole groups are split, so all cases of a group share one split.

    Counts (of groups, or of cases without ``groups``) are ``round(n * fraction)`` for val and test; with
    ``n >= 3`` each of val and test with a positive fraction gets at least one, and train always keeps at
    least one.
    """
    groups = groups or {cid: cid for cid in case_ids}
    ids = sorted({groups[cid] for cid in case_ids})
    n = len(ids)
    order = [ids[i] for i in np.random.default_rng(seed).permutation(n)]
    n_val, n_test = (int(round(n * f)) for f in fractions[1:])
    if n >= 3:
        n_val = max(n_val, 1) if fractions[1] > 0 else 0
        n_test = max(n_test, 1) if fractions[2] > 0 else 0
    while n_val + n_test > max(n - 1, 0):
        if n_val >= n_test and n_val > 0:
            n_val -= 1
        else:
            n_test -= 1
    of_group = {}
    for i, group in enumerate(order):
        of_group[group] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return {cid: of_group[groups[cid]] for cid in case_ids}


def case_groups(case_ids: list[str], pattern: str) -> dict[str, str]:
    """Group of each case: the first capture group of ``pattern`` in its id (the whole match without one).

    Raises :class:`ConfigError` naming a case the pattern does not match.
    """
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise ConfigError(f"prepare setting split_group={pattern!r}: not a regular expression ({err})") from None
    groups = {}
    for cid in case_ids:
        found = regex.search(cid)
        if found is None:
            raise ConfigError(f"prepare setting split_group={pattern!r} does not match case '{cid}'; give a "
                              "pattern that names the patient of every case, e.g. '^(patient\\d+)'")
        groups[cid] = found.group(1) if regex.groups else found.group(0)
    return groups


def read_split_file(path: str | os.PathLike[str], case_ids: list[str],
                    groups: dict[str, str] | None = None) -> dict[str, str]:
    """Splits from a JSON file: ``{"train": [...], "val": [...], "test": [...]}``, or nnU-Net's
    ``splits_final.json`` (a list of folds of ``{"train", "val"}``; fold 0 is used, no test cases).

    Entries are case ids, or group names when ``groups`` is given. Every case must be listed exactly once.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: unreadable split file ({type(err).__name__}); give a JSON file "
                          '{"train": [...], "val": [...], "test": [...]}') from None
    if isinstance(data, list) and data and isinstance(data[0], dict):
        data = data[0]  # nnU-Net: fold 0
    if not isinstance(data, dict) or not set(data) <= {"train", "val", "test"} or not all(
            isinstance(v, list) for v in data.values()):
        raise ConfigError(f"{path}: a split file maps train, val and test to lists of case ids")
    key_of = groups or {cid: cid for cid in case_ids}
    listed: dict[str, str] = {}
    for split, names in data.items():
        for name in names:
            if str(name) in listed:
                raise ConfigError(f"{path}: '{name}' is listed in both {listed[str(name)]} and {split}")
            listed[str(name)] = split
    missing = sorted({key for key in key_of.values() if key not in listed})
    if missing:
        raise ConfigError(f"{path}: {len(missing)} of the dataset's cases are in no split (e.g. '{missing[0]}'); "
                          "list every case (or group) once")
    return {cid: listed[key_of[cid]] for cid in case_ids}


_SUSPECTED_GROUP = re.compile(r"^(.+?)[_\-.][A-Za-z]*\d+$")
"""A case id that looks like ``<subject>_<frame or slice>`` (``patient001_frame01``, ``10001_458``)."""


def cut_groups(splits: dict[str, str]) -> list[str]:
    """Subjects that case names suggest (``<subject>_<number>``) and that the split puts in several splits."""
    seen: dict[str, set[str]] = {}
    for cid, split in splits.items():
        found = _SUSPECTED_GROUP.match(cid)
        if found is not None:
            seen.setdefault(found.group(1), set()).add(split)
    return sorted(group for group, where in seen.items() if len(where) > 1)


def resolve_splits(case_ids: list[str], config: PrepareConfig) -> tuple[dict[str, str], list[str]]:
    """The split of every case from the settings (``split_file``, else ``split_group``, else per case), and
    the warnings a user should read (a one-case dataset; subjects the split cuts)."""
    groups = case_groups(case_ids, config.split_group) if config.split_group else None
    if config.split_file:
        splits = read_split_file(config.split_file, case_ids, groups)
    else:
        splits = assign_splits(case_ids, config.split, config.seed, groups)
    warnings = []
    if len(case_ids) == 1:
        warnings.append(f"only one case ('{case_ids[0]}'): it is in train, so val and test are empty and `samadapt "
                        "eval` has nothing to score; add cases (a 2D folder: one image per case)")
    cut = cut_groups(splits) if groups is None and not config.split_file else []
    if cut:
        warnings.append(
            f"case names suggest {len(cut)} subject(s) with cases in several splits (e.g. '{cut[0]}'); if these "
            "are one patient's scans, test scores measure memorisation: rerun prepare with "
            "--split-group '^(<subject pattern>)' or --split-file splits.json")
    return splits, warnings


# ----------------------------------------------------------------------------- per-case work


@dataclass
class _CaseResult:
    images: np.ndarray
    labels: np.ndarray
    objects: list[SliceObject]
    meta: dict


_Candidate = tuple[ClassSpec, int, tuple[int, ...]]  # class, instance, label values
_Found = tuple[str, int, int, tuple[int, ...], int, tuple[int, int, int, int]]


def _slice_objects(labels_mf: np.ndarray, candidates: list[_Candidate], min_area: int) -> list[_Found]:
    """Objects of one ``SxS`` model-frame label slice as ``(class, index, instance, values, area, box)``."""
    present = set(np.unique(labels_mf).tolist())
    found = []
    for spec, instance, values in candidates:
        if present.isdisjoint(values):
            continue
        mask = np.isin(labels_mf, values)
        area = int(mask.sum())
        if area >= min_area:
            found.append((spec.name, spec.index, instance, values, area, mask_box(mask)))
    return found


def _select_slices(case_id: str, per_slice: list[list], config: PrepareConfig) -> list[int]:
    """Positions (into ``per_slice``) of the slices to keep: all with objects plus the chosen empty ones."""
    with_objects = [i for i, objs in enumerate(per_slice) if objs]
    empty = [i for i, objs in enumerate(per_slice) if not objs]
    chosen = [empty[j] for j in _keep_empty(case_id, len(empty), config.keep_empty_ratio, config.seed)]
    return sorted(with_objects + chosen)


def _assemble(case_id: str, kept: list[int], per_slice: list[list], images: list[np.ndarray],
              labels: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, list[SliceObject]]:
    objects = [SliceObject(case_id, s, name, index, instance, values, area, box)
               for s, position in enumerate(kept)
               for name, index, instance, values, area, box in per_slice[position]]
    return np.stack(images).astype(np.uint8), np.stack(labels).astype(np.uint16), objects


def _volume_case(case, classes: list[ClassSpec], declared: set[int], ignore_label: int | None, window: Window,
                 config: PrepareConfig, params: dict, sources: list[list]) -> _CaseResult | None:
    image_path = Path(case.image_paths[0])
    label_path = Path(case.label_path)
    for path in (image_path, label_path):
        _check_volume_header(path, config.axis)
    image = read_volume(image_path)
    label = read_volume(label_path)
    check_same_grid(image, label)
    _check_volume_size(image_path, image.array.shape, config.axis)

    hu = image.array
    if np.issubdtype(hu.dtype, np.floating) and not np.isfinite(hu).all():
        raise InputFileError(f"{image_path}: contains NaN or infinite voxels; "
                             "fix or mask them before preparing")
    raw = label.array
    if np.issubdtype(raw.dtype, np.floating):
        if not np.isfinite(raw).all() or not np.array_equal(raw, np.round(raw)):
            raise DatasetError(f"{label_path}: label values are not integers; save the label map as integers")
    elif not np.issubdtype(raw.dtype, np.integer) and raw.dtype != bool:
        raise DatasetError(f"{label_path}: label voxels of type {raw.dtype} are not integer labels")
    present = np.unique(raw)
    unknown = sorted(int(v) for v in present if int(v) not in declared | {0, ignore_label})
    if unknown:
        shown = ", ".join(str(v) for v in unknown[:10]) + (", ..." if len(unknown) > 10 else "")
        raise DatasetError(f"{label_path}: label values {shown} are not declared in dataset.json; "
                           "add them to its 'labels' or fix the label file")

    # keep only the selected classes' values (others become background), as uint16
    selected = sorted({v for spec in classes for v in spec.values})
    if ignore_label is not None:
        selected.append(int(ignore_label))  # unannotated voxels keep their value (nnU-Net "ignore")
    if present.size and (int(present.min()) < 0 or int(present.max()) > np.iinfo(np.uint16).max):
        raise DatasetError(f"{label_path}: label values must lie in 0..65535, found {int(present.min())}.."
                           f"{int(present.max())}; renumber the labels")
    top = max(int(present.max()) if present.size else 0, max(selected, default=0))
    lut = np.zeros(top + 1, dtype=np.uint16)
    lut[selected] = selected
    labels3d = lut[raw if raw.dtype.kind in "ub" else raw.astype(np.int32)]
    intensities = window.apply(hu)
    flips = slice_flips(image.geometry, config.axis)
    n_slices = intensities.shape[AXES[config.axis]]
    candidates = [(spec, 0, spec.values) for spec in classes]

    per_slice, framed_labels = [], []
    for index in range(n_slices):
        lab = take_slice(labels3d, config.axis, index, flips)
        if not lab.any():
            per_slice.append([])
            framed_labels.append(None)
            continue
        framed = to_model_frame_labels(np.ascontiguousarray(lab), config.image_size)
        per_slice.append(_slice_objects(framed, candidates, config.min_area))
        framed_labels.append(framed)
    kept = _select_slices(case.case_id, per_slice, config)
    if not kept:
        return None
    source_hw = take_slice(intensities, config.axis, 0).shape
    images, labels = [], []
    for index in kept:
        oriented = np.ascontiguousarray(take_slice(intensities, config.axis, index, flips))
        images.append(to_model_frame_image(oriented, config.image_size))
        framed = framed_labels[index]
        labels.append(framed if framed is not None else np.zeros((config.image_size,) * 2, dtype=np.uint16))
    images_arr, labels_arr, objects = _assemble(case.case_id, kept, per_slice, images, labels)
    spacing_hw, slice_spacing = slice_spacings(image.geometry, config.axis)
    meta = {
        "source_image": str(image_path), "source_label": str(label_path),
        "geometry": image.geometry.to_dict(), "axis": config.axis, "slice_indices": kept,
        "source_hw": list(source_hw), "valid_hw": list(frame_shape(*source_hw, config.image_size)),
        "pixel_spacing_mm": list(model_frame_spacing(spacing_hw, source_hw, config.image_size)),
        "slice_spacing_mm": slice_spacing, "flip_hw": list(flips), "window": window.to_dict(),
        "params": params, "source_files": sources,
    }
    return _CaseResult(images_arr, labels_arr, objects, meta)


def _folder2d_values(dataset, wanted: list[str] | None, source: Path) -> tuple[list[ClassSpec], dict]:
    """Dataset-wide raw values: ``{(class, instance): value}`` 1..K, classes in order, instances ascending."""
    instances: dict[str, set[int]] = {}
    for case in dataset.cases:
        for inst in case.instances:
            instances.setdefault(inst.class_name, set()).add(int(inst.instance))
    order = [c for c in dataset.classes if c in instances] + sorted(set(instances) - set(dataset.classes))
    value_of, available = {}, []
    for name in order:
        values = []
        for instance in sorted(instances[name]):
            value_of[(name, instance)] = len(value_of) + 1
            values.append(value_of[(name, instance)])
        available.append((name, tuple(values)))
    if wanted is not None:
        unknown = [w for w in wanted if w not in instances]
        if unknown:
            raise ConfigError(f"classes {', '.join(unknown)} have no masks in {source}; "
                              f"known: {', '.join(order)}")
    return _select_classes(available, wanted, source), value_of


SPACING_FILE = "spacing.json"


def read_spacing_2d(root: Path, stems: list[str]) -> tuple[dict[str, tuple[float, float]], Path | None]:
    """Pixel size in mm of each 2D image: ``(row, col)`` from ``<root>/spacing.json``, else 1 mm (unknown).

    The file maps image stems to a number (square pixels) or ``[row_mm, col_mm]``; a ``"default"`` entry
    serves the images it does not name. Returns the spacings and the file (None when there is none).
    Raises :class:`DatasetError` naming the file for bad values or images it leaves without a spacing.
    """
    path = root / SPACING_FILE
    if not path.is_file():
        return {stem: (1.0, 1.0) for stem in stems}, None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DatasetError(f"{path}: unreadable ({type(err).__name__}); give JSON {{\"<image stem>\": "
                           "[row_mm, col_mm] or mm, \"default\": mm}") from None

    def pair(key: str, value) -> tuple[float, float]:
        values = [value, value] if isinstance(value, (int, float)) and not isinstance(value, bool) else value
        if (not isinstance(values, list) or len(values) != 2 or any(isinstance(v, bool) for v in values)
                or not all(isinstance(v, (int, float)) and 0 < v < 1e3 for v in values)):
            raise DatasetError(f"{path}: '{key}' must be a pixel size in mm, a positive number or [row_mm, col_mm]")
        return float(values[0]), float(values[1])

    if not isinstance(data, dict):
        raise DatasetError(f"{path}: give an object mapping image stems (or \"default\") to pixel sizes in mm")
    default = pair("default", data["default"]) if "default" in data else None
    spacings = {}
    for stem in stems:
        if stem in data:
            spacings[stem] = pair(stem, data[stem])
        elif default is not None:
            spacings[stem] = default
        else:
            raise DatasetError(f"{path}: no pixel size for image '{stem}'; add it or a \"default\" entry")
    return spacings, path


def _folder2d_case(case, classes: list[ClassSpec], value_of: dict, config: PrepareConfig,
                   params: dict, sources: list[list], spacing: tuple[float, float] = (1.0, 1.0),
                   spacing_known: bool = False) -> _CaseResult | None:
    from samadapt.io.image2d import read_image_2d, read_mask_2d

    image = read_image_2d(case.image_path)
    _check_2d_side(Path(case.image_path), image.shape[:2])
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
        raise InputFileError(f"{case.image_path}: contains NaN or infinite pixels; fix them before preparing")
    h, w = image.shape[:2]
    by_name = {spec.name: spec for spec in classes}
    labels = np.zeros((h, w), dtype=np.uint16)
    candidates = []
    painted = sorted((value_of[(inst.class_name, int(inst.instance))], inst) for inst in case.instances
                     if inst.class_name in by_name)
    for value, inst in painted:  # later (higher value) instances win overlaps
        mask = read_mask_2d(inst.path)
        if mask.shape != (h, w):
            raise GeometryMismatchError(f"{inst.path}: mask is {mask.shape[0]}x{mask.shape[1]} but its image "
                                        f"{case.image_path} is {h}x{w}; resize the mask to the image")
        labels[mask] = value
        candidates.append((by_name[inst.class_name], int(inst.instance), (value,)))
    framed = to_model_frame_labels(labels, config.image_size)
    per_slice = [_slice_objects(framed, candidates, config.min_area)]
    kept = _select_slices(case.case_id, per_slice, config)
    if not kept:
        return None
    window = _window_2d(config.window, config, image.dtype)
    image_mf = to_model_frame_image(window.apply(image), config.image_size)
    images_arr, labels_arr, objects = _assemble(case.case_id, kept, per_slice, [image_mf], [framed])
    identity = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    geometry = Geometry((w, h, 1), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), identity)
    meta = {
        "source_image": str(case.image_path), "source_label": None, "geometry": geometry.to_dict(),
        "axis": "2d", "slice_indices": [0], "source_hw": [h, w],
        "valid_hw": list(frame_shape(h, w, config.image_size)),
        "pixel_spacing_mm": list(model_frame_spacing(spacing, (h, w), config.image_size)),
        "source_spacing_mm": list(spacing), "spacing_known": spacing_known,
        "slice_spacing_mm": 1.0, "flip_hw": [False, False], "window": window.to_dict(), "params": params,
        "source_masks": {str(value): str(inst.path) for value, inst in painted}, "source_files": sources,
    }
    return _CaseResult(images_arr, labels_arr, objects, meta)


def _window_2d(spec: str, config: PrepareConfig, image_dtype: np.dtype | None) -> Window:
    """2D folders: ``auto`` passes 8-bit images through and normalises 16-bit ones by percentiles."""
    window = parse_window(spec, percentiles=config.percentiles)
    if window.kind == "auto":
        return Window("none") if image_dtype == np.uint8 else window.resolve("MR")
    if window.kind == "ct" and image_dtype == np.uint8:
        raise ConfigError(f"window '{spec}': 8-bit 2D images are already windowed, not HU; use --window auto")
    return window


# ----------------------------------------------------------------------------- driver


def _volume_files(path: Path) -> list[Path]:
    """A volume file, or every file of a DICOM series folder (all of them decide whether a shard is current)."""
    return sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]


def _recorded_source(out: Path) -> str | None:
    """The source root a prepared dataset in ``out`` (finished, or an unfinished run's marker) was made from."""
    for name, keys in (("manifest.json", ("source", "root")), (PREPARE_MARKER, ("source",))):
        try:
            value = json.loads((out / name).read_text())
            for key in keys:
                value = value[key]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(value, str):
            return value
    return None


def check_output_folder(out: Path, source: Path) -> None:
    """Refuse an ``out`` that is a file, or a non-empty folder that is not a prepared dataset of ``source``.

    A prepared dataset is recognised by its ``manifest.json`` or, for an unfinished run, by the marker file
    written when the run began (:data:`samadapt.data.prepared.PREPARE_MARKER`).
    """
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: is a file; give a new or empty folder for the prepared dataset")
    if not out.is_dir() or not any(out.iterdir()):
        return
    recorded = _recorded_source(out)
    if recorded is None:
        raise ConfigError(f"{out}: folder is not empty and is not a samadapt prepared dataset; choose a new or "
                          "empty folder")
    if recorded != str(source.resolve()):
        raise ConfigError(f"{out}: holds a prepared dataset of {recorded}, not of {source}; choose a new folder "
                          "(prepare reuses a folder only for the same source)")


def _read_source(source: Path):
    from samadapt.io.layouts import detect_layout, read_folder_2d, read_nnunet_dataset

    layout = detect_layout(source)
    dataset = read_nnunet_dataset(source) if layout == "nnunet" else read_folder_2d(source)
    return layout, dataset


def prepare_dataset(source: str | Path, out: str | Path, config: PrepareConfig,
                    progress: Progress | None = None) -> PreparedDataset:
    """Prepare the raw dataset at ``source`` into ``out`` and return it opened.

    ``out`` must be new, empty, or a prepared dataset of the same ``source`` (finished or not); anything
    else is refused before any file is touched. Resumes: case folders already in ``out`` that are intact
    and were written with the same parameters from the same source files are kept as they are; damaged
    ones are rebuilt. ``out/config.yaml`` and finally ``out/manifest.json`` are written only when every
    case is done. ``progress(done, total)`` is called after each case.

    Volume cases (nnU-Net / MSD layout) may be DICOM series: a folder ``imagesTr/<case>_0000/`` (or an MSD
    entry naming a folder) of one series' slices, with its label volume in ``labelsTr`` as usual.

    Raises :class:`DatasetError` (empty dataset, undeclared label values, no objects left),
    :class:`InputFileError` (unreadable, NaN or absurdly large images), :class:`GeometryMismatchError`
    (label off its image's grid) and :class:`ConfigError` (bad settings, an ``out`` folder holding
    something else). A storage failure (a full disk: an ``OSError`` or
    :class:`~samadapt.errors.StorageError`) takes back what this run wrote first (:func:`_remove_written`).
    """
    out = Path(out)
    existed = out.is_dir()
    fresh = not existed or not any(out.iterdir())  # nothing of an earlier run there
    written: list[str] = []
    try:
        return _prepare(Path(source), out, config, progress, written)
    except BaseException as err:
        if storage_error(err) is not None:
            _remove_written(out, fresh, existed, written)
        raise


def _remove_written(out: Path, fresh: bool, existed: bool, written: list[str]) -> None:
    """After a storage failure (a full disk): take back what this run wrote, so that nothing half-done stays.

    A folder that was empty (``fresh``) is emptied again, and removed if this run made it (not ``existed``);
    in an unfinished dataset of an earlier run only the case folders this run wrote go, and its marker
    stays, so that a rerun still recognises the folder and keeps the earlier run's cases.
    """
    if fresh:
        for child in out.iterdir() if out.is_dir() else ():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
        if not existed and out.is_dir():
            out.rmdir()
        return
    for case_id in written:
        shutil.rmtree(case_dir(out, case_id), ignore_errors=True)


def _prepare(source: Path, out: Path, config: PrepareConfig, progress: Progress | None,
             written: list[str]) -> PreparedDataset:
    """:func:`prepare_dataset`; appends the id of every case folder it (re)writes to ``written`` first."""
    if not source.is_dir():
        raise InputFileError(f"{source}: no such dataset folder; point to an nnU-Net dataset or a 2D folder")
    if out.resolve() == source.resolve() or source.resolve() in out.resolve().parents:
        raise ConfigError(f"{out}: write the prepared dataset outside the source folder {source}")
    check_output_folder(out, source)
    layout, dataset = _read_source(source)
    if not dataset.cases:
        raise DatasetError(f"{source}: holds no cases; add images (and labels) in its {layout} layout")
    if layout == "nnunet":  # before any work: ITK aborts the process on a path that is not UTF-8
        for case in dataset.cases:
            for path in [*case.image_paths[:1], *([case.label_path] if case.label_path is not None else [])]:
                check_path_encodable(path)
                if path.is_dir():
                    for file in path.iterdir():
                        check_path_encodable(file)
    if config.split_group:  # a pattern that misses a case fails now, not after the whole scan
        case_groups([case.case_id for case in dataset.cases], config.split_group)

    if layout == "nnunet":
        available = [(c.name, tuple(c.values)) for c in dataset.classes]
        classes = _select_classes(available, config.classes, source)
        declared = {int(v) for c in dataset.classes for v in c.values}
        window = parse_window(config.window, modality=dataset.modality, percentiles=config.percentiles)
        name, axis = dataset.name, config.axis
    else:
        classes, value_of = _folder2d_values(dataset, config.classes, source)
        window = parse_window(config.window, percentiles=config.percentiles)  # resolved per image
        name, axis = source.name, "2d"
        spacings, spacing_file = read_spacing_2d(source, [c.case_id for c in dataset.cases])
    if not classes:
        raise DatasetError(f"{source}: declares no label classes; add labels (or masks) to the dataset")
    params = {**config_to_dict(config), "axis": axis, "window_resolved": window.to_dict(), "layout": layout,
              "classes_resolved": [spec.to_dict() for spec in classes], "format_version": FORMAT_VERSION,
              "ignore_label": getattr(dataset, "ignore_label", None)}

    marker, marked = {"source": str(source.resolve())}, False  # written before this run's first change
    if out.is_dir() and any(out.iterdir()):  # a dataset of this source (check_output_folder): keep it recognised
        write_json_atomic(out / PREPARE_MARKER, marker)
        marked = True
    (out / "manifest.json").unlink(missing_ok=True)  # the dataset is incomplete from here on
    if (out / "cases").is_dir():  # leftovers of a killed run's atomic writes
        for leftover in (out / "cases").glob(".*.tmp"):
            shutil.rmtree(leftover, ignore_errors=True)
    done: dict[str, tuple[int, int]] = {}
    skipped: list[dict] = []
    for position, case in enumerate(dataset.cases):
        case_id = case.case_id
        if layout == "nnunet":
            files = _volume_files(Path(case.image_paths[0])) + (
                [case.label_path] if case.label_path is not None else [])
        else:
            files = [case.image_path] + [inst.path for inst in case.instances] + (
                [spacing_file] if spacing_file is not None else [])
        sources = source_signature(files)
        if case_is_complete(out, case_id, params, sources):
            n_slices, objects, _ = check_case(case_dir(out, case_id), config.image_size)
            done[case_id] = (n_slices, len(objects))
        else:
            if layout == "nnunet":
                if case.label_path is None:
                    skipped.append({"case_id": case_id, "reason": "no label file"})
                    result = None
                else:
                    result = _volume_case(case, classes, declared, dataset.ignore_label, window, config,
                                          params, sources)
            else:
                result = _folder2d_case(case, classes, value_of, config, params, sources, spacings[case_id],
                                        spacing_file is not None)
            if result is None:
                if not any(s["case_id"] == case_id for s in skipped):
                    skipped.append({"case_id": case_id, "reason": "no objects and no empty slice drawn"})
            else:
                if not marked:
                    write_json_atomic(out / PREPARE_MARKER, marker)
                    marked = True
                written.append(case_id)
                write_case(out, case_id, result.images, result.labels, result.objects, result.meta)
                done[case_id] = (int(result.images.shape[0]), len(result.objects))
        if progress is not None:
            progress(position + 1, len(dataset.cases))

    if not done or sum(n for _, n in done.values()) == 0:
        raise DatasetError(f"{source}: no objects of at least {config.min_area} model-frame pixels in any "
                           "case; check the labels, the classes setting or lower --min-area")
    splits, warnings = resolve_splits(list(done), config)
    cases = [{"case_id": cid, "split": splits[cid], "n_slices": done[cid][0], "n_objects": done[cid][1]}
             for cid in sorted(done)]
    full_hash, content_hash = dataset_hashes(out, params, cases)
    manifest = {
        "format_version": FORMAT_VERSION,
        "source": {"root": str(source.resolve()), "layout": layout, "name": name},
        "params": params, "image_size": config.image_size,
        "classes": [spec.to_dict() for spec in classes],
        "cases": cases, "split_seed": config.seed,
        "hash": full_hash, "content_hash": content_hash,
        "skipped": skipped,
        "warnings": warnings,
    }
    write_json_atomic(out / PREPARE_MARKER, marker)
    save_config(config, out / "config.yaml")
    write_manifest(out, manifest)
    return PreparedDataset(out)
