"""The prepared-dataset format: model-frame slices, label maps and per-slice objects, one shard per case.

Layout (``format_version`` 1)::

    <out>/manifest.json               written last; its presence marks a complete dataset
    <out>/config.yaml                 the PrepareConfig used (written by the CLI)
    <out>/cases/<case_id>/images.npy  (S, H, W) uint8, or (S, H, W, 3) for RGB sources; H = W = image_size
    <out>/cases/<case_id>/labels.npy  (S, H, W) uint16 raw label values in the model frame (nearest)
    <out>/cases/<case_id>/objects.json
    <out>/cases/<case_id>/meta.json

``manifest.json``::

    {"format_version": 1, "source": {"root", "layout": "nnunet" | "folder2d", "name"},
     "params": {...every preprocessing parameter...}, "image_size": int,
     "classes": [{"name", "values": [int...], "index": 1-based int}],
     "cases": [{"case_id", "split": "train" | "val" | "test", "n_slices", "n_objects"}],
     "split_seed": int, "hash": sha256 hex (see :func:`dataset_hash`),
     "skipped": [{"case_id", "reason"}]}

``objects.json``: a list of ``{"slice", "class", "class_index", "instance", "values", "area", "box"}`` where
``slice`` indexes axis 0 of the shard arrays, ``area`` counts model-frame pixels and ``box`` is
``[x0, y0, x1, y1]`` XYXY in model-frame pixels, inclusive-exclusive (``x1 = max x + 1``). An object's mask
is ``np.isin(labels[slice], values)``.

``meta.json``: ``{"source_image", "source_label" | null, "geometry": Geometry.to_dict(), "axis":
"axial" | "coronal" | "sagittal" | "2d", "slice_indices": [index along the axis in the source volume],
"source_hw": [h, w] (slice size before resizing), "valid_hw": [h', w'] (unpadded model-frame region),
"pixel_spacing_mm": [sy, sx] per model-frame pixel, "slice_spacing_mm": float, "flip_hw": [bool, bool]
(rows / columns flipped after extraction from the source array, see :mod:`samadapt.data.orientation`),
"window": {...} (the intensity mapping used), "params": {...} (equal to the manifest's),
"source_files": [[path, size, mtime_ns], ...]}`` (``params`` and ``source_files`` decide whether a shard
is reused on resume); 2D cases add ``"source_masks": {raw value: mask file}``.

Every case folder is written atomically, so a folder that exists is complete. Opening a dataset
(:class:`PreparedDataset`) checks every shard: the ``.npy`` headers (dtype, shape, a file as long as its
header says; no pickled data), and that ``objects.json`` and ``meta.json`` parse into the fields above. A
damaged shard is a :class:`DatasetError` naming its file; ``samadapt prepare`` rebuilds such a shard when it
is rerun into the folder.

A hidden ``.samadapt_prepare.json`` (``{"source": <source root>}``) is written by every prepare run before
it changes the folder, so that ``samadapt prepare`` recognises an unfinished dataset of the same source
(and refuses any other non-empty folder).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

from samadapt.errors import ConfigError, DatasetError
from samadapt.io.atomic import atomic_dir, write_json_atomic
from samadapt.io.checksums import file_sha256

FORMAT_VERSION = 1
CASE_FILES = ("images.npy", "labels.npy", "objects.json", "meta.json")
SPLITS = ("train", "val", "test")
PREPARE_MARKER = ".samadapt_prepare.json"
_REBUILD = "rerun `samadapt prepare` into this folder to rebuild the case"
_OBJECT_KEYS = ("slice", "class", "class_index", "instance", "values", "area", "box")
_MANIFEST_KEYS = ("format_version", "source", "params", "image_size", "classes", "cases", "split_seed",
                  "hash")


@dataclass(frozen=True)
class SliceObject:
    """One object (a class, or one instance of it) on one slice of a case.

    ``box`` is ``(x0, y0, x1, y1)`` XYXY in model-frame pixels, inclusive-exclusive; ``area`` counts
    model-frame pixels; the mask is ``np.isin(labels[slice], values)``.
    """

    case_id: str
    slice: int
    class_name: str
    class_index: int
    instance: int
    values: tuple[int, ...]
    area: int
    box: tuple[int, int, int, int]

    def to_dict(self) -> dict:
        """The ``objects.json`` entry (without ``case_id``, which the folder names)."""
        return {"slice": self.slice, "class": self.class_name, "class_index": self.class_index,
                "instance": self.instance, "values": list(self.values), "area": self.area,
                "box": list(self.box)}

    @classmethod
    def from_dict(cls, case_id: str, data: dict) -> SliceObject:
        return cls(case_id, int(data["slice"]), str(data["class"]), int(data["class_index"]),
                   int(data["instance"]), tuple(int(v) for v in data["values"]), int(data["area"]),
                   tuple(int(v) for v in data["box"]))


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` of a non-empty ``HxW`` boolean mask, inclusive-exclusive, in its pixels."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("mask is empty")
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _canonical(data: object) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def case_hash(case_dir: Path) -> str:
    """sha256 over a case shard: the bytes of images/labels/objects, and meta.json without source paths.

    Source paths are left out so the same data prepared from another location hashes the same.
    """
    digest = hashlib.sha256()
    for name in ("images.npy", "labels.npy", "objects.json"):
        digest.update(name.encode() + file_sha256(case_dir / name).encode())
    meta = json.loads((case_dir / "meta.json").read_text())
    for key in ("source_image", "source_label", "source_masks", "source_files"):
        meta.pop(key, None)
    digest.update(b"meta.json" + hashlib.sha256(_canonical(meta)).hexdigest().encode())
    return digest.hexdigest()


def dataset_hash(out: Path, params: dict, cases: Iterable[dict]) -> str:
    """sha256 over ``params`` (canonical JSON) and, per case in order, its id, split and :func:`case_hash`."""
    return dataset_hashes(out, params, cases)[0]


def dataset_hashes(out: Path, params: dict, cases: Iterable[dict]) -> tuple[str, str]:
    """``(hash, content_hash)``: :func:`dataset_hash`, and the same without the split (the split settings
    and each case's split left out). What depends on the cases' contents only (the embedding cache) keys on
    ``content_hash``, so re-splitting a prepared folder does not invalidate it."""
    full = hashlib.sha256(_canonical({"format_version": FORMAT_VERSION, "params": params}))
    content = hashlib.sha256(_canonical({"format_version": FORMAT_VERSION, "params": _shard_params(params),
                                         "without": "split"}))
    for case in cases:
        shard = case_hash(Path(out) / "cases" / case["case_id"]).encode()
        full.update(_canonical([case["case_id"], case["split"]]))
        full.update(shard)
        content.update(_canonical([case["case_id"]]))
        content.update(shard)
    return full.hexdigest(), content.hexdigest()


_NPY_HEADER = re.compile(r"\{'descr': '([<>|=]?[a-zA-Z]\d*)', 'fortran_order': (?:True|False), "
                         r"'shape': \(((?:\d+, ?)*\d*)\), \}\s*")
"""The header np.save writes for a plain array: read directly, much faster than numpy's general parser."""


def _parse_npy_header(f) -> tuple[tuple[int, ...], np.dtype]:
    version = npy_format.read_magic(f)
    if version not in ((1, 0), (2, 0)):
        raise ValueError(f"npy format version {version}")
    size_bytes = f.read(2 if version == (1, 0) else 4)
    if len(size_bytes) != (2 if version == (1, 0) else 4):
        raise EOFError("header length cut short")
    header = f.read(int.from_bytes(size_bytes, "little"))
    fast = _NPY_HEADER.fullmatch(header.decode("latin1"))
    if fast is not None:
        return tuple(int(n) for n in fast[2].replace(" ", "").split(",") if n), np.dtype(fast[1])
    f.seek(0)
    npy_format.read_magic(f)
    read = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
    shape, _, dtype = read(f)
    return tuple(int(n) for n in shape), dtype


def _npy_header(path: Path, dtype: np.dtype) -> tuple[int, ...]:
    """Shape of the ``.npy`` array at ``path`` from its header, checking that it holds ``dtype`` values (so no
    pickled objects) and that the file is as long as the header says; :class:`DatasetError` otherwise."""
    try:
        with open(path, "rb") as f:
            try:
                shape, found = _parse_npy_header(f)
            except (ValueError, EOFError, SyntaxError, TypeError) as err:
                raise DatasetError(f"{path}: not a readable .npy array ({str(err)[:80]}); {_REBUILD}") from None
            data_start = f.tell()
        size = path.stat().st_size
    except OSError as err:
        raise DatasetError(f"{path}: cannot be read ({err.strerror or err}); {_REBUILD}") from None
    if found.hasobject or found != dtype:
        what = "Python objects (pickled)" if found.hasobject else f"{found} values"
        raise DatasetError(f"{path}: holds {what}, not {np.dtype(dtype)}; {_REBUILD}")
    expected = data_start + math.prod(shape) * found.itemsize
    if size < expected:
        raise DatasetError(f"{path}: is truncated ({size} of {expected} bytes); {_REBUILD}")
    return shape


def _json_file(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:  # UnicodeDecodeError is a ValueError
        raise DatasetError(f"{path}: unreadable or not JSON ({type(err).__name__}); {_REBUILD}") from None


def _read_objects(path: Path, data: object, case_id: str, n_slices: int, image_size: int) -> list[SliceObject]:
    if not isinstance(data, list):
        raise DatasetError(f"{path}: must hold a list of objects; {_REBUILD}")
    objects = []
    for position, entry in enumerate(data):
        missing = [k for k in _OBJECT_KEYS if k not in entry] if isinstance(entry, dict) else list(_OBJECT_KEYS)
        if missing:
            raise DatasetError(f"{path}: object {position} lacks {', '.join(missing)}; {_REBUILD}")
        try:
            obj = SliceObject.from_dict(case_id, entry)
        except (TypeError, ValueError):
            raise DatasetError(f"{path}: object {position} has a malformed field; {_REBUILD}") from None
        x0, y0, x1, y1 = obj.box if len(obj.box) == 4 else (0, 0, 0, 0)
        if not (0 <= x0 < x1 <= image_size and 0 <= y0 < y1 <= image_size):
            raise DatasetError(f"{path}: object {position} has box {list(obj.box)} outside the {image_size} px "
                               f"model frame; {_REBUILD}")
        if not 0 <= obj.slice < n_slices:
            raise DatasetError(f"{path}: object {position} is on slice {obj.slice}, but the case has {n_slices} "
                               f"slices; {_REBUILD}")
        objects.append(obj)
    return objects


def check_case(folder: Path, image_size: int) -> tuple[int, list[SliceObject], dict]:
    """Check a case shard against the format (module docstring) without reading its arrays.

    Returns ``(number of slices, objects, meta.json content)``; raises :class:`DatasetError` naming the
    missing or damaged file.
    """
    missing = [n for n in CASE_FILES if not (folder / n).is_file()]
    if missing:
        raise DatasetError(f"{folder}: missing {', '.join(missing)}; {_REBUILD}")
    images = _npy_header(folder / "images.npy", np.dtype(np.uint8))
    side = (image_size, image_size)
    if not (len(images) == 3 or (len(images) == 4 and images[3] == 3)) or images[1:3] != side or images[0] < 1:
        raise DatasetError(f"{folder / 'images.npy'}: shape {images} is not (slices, {image_size}, {image_size}) "
                           f"or (slices, {image_size}, {image_size}, 3); {_REBUILD}")
    labels = _npy_header(folder / "labels.npy", np.dtype(np.uint16))
    if labels != images[:3]:
        raise DatasetError(f"{folder / 'labels.npy'}: shape {labels} differs from the images' {images[:3]}; "
                           f"{_REBUILD}")
    meta = _json_file(folder / "meta.json")
    valid = meta.get("valid_hw") if isinstance(meta, dict) else None
    if not (isinstance(valid, list) and len(valid) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= image_size for v in valid)):
        raise DatasetError(f"{folder / 'meta.json'}: needs \"valid_hw\": [h, w] within the {image_size} px frame; "
                           f"{_REBUILD}")
    objects = _read_objects(folder / "objects.json", _json_file(folder / "objects.json"), folder.name, images[0],
                            image_size)
    return images[0], objects, meta


def case_dir(out: str | os.PathLike[str], case_id: str) -> Path:
    return Path(out) / "cases" / case_id


def source_signature(paths: Iterable[str | os.PathLike[str]]) -> list[list]:
    """``[[path, size, mtime_ns], ...]`` of source files: a changed or moved source invalidates a shard."""
    signature = []
    for path in paths:
        stat = Path(path).stat()
        signature.append([str(path), int(stat.st_size), int(stat.st_mtime_ns)])
    return signature


SPLIT_SETTINGS = ("split", "split_group", "split_file")
"""Prepare settings that decide the split only: a new split rewrites the manifest, never a case shard."""


def _shard_params(params: dict) -> dict:
    return {k: v for k, v in params.items() if k not in SPLIT_SETTINGS}


def case_is_complete(out: str | os.PathLike[str], case_id: str, params: dict,
                     sources: list[list] | None = None) -> bool:
    """True when the case folder holds every shard file, intact (:func:`check_case`), and was written with
    exactly ``params`` (the split settings aside: they do not change a shard).

    With ``sources`` (a :func:`source_signature`), the shard must also come from those very files.
    """
    folder = case_dir(out, case_id)
    try:
        _, _, meta = check_case(folder, int(params.get("image_size", 0)))
    except (DatasetError, TypeError, ValueError):
        return False
    if not isinstance(meta.get("params"), dict):
        return False
    if _canonical(_shard_params(meta["params"])) != _canonical(_shard_params(params)):
        return False
    return sources is None or _canonical(meta.get("source_files")) == _canonical(sources)


def write_case(out: str | os.PathLike[str], case_id: str, images: np.ndarray, labels: np.ndarray,
               objects: list[SliceObject], meta: dict) -> Path:
    """Write one case shard atomically (the folder appears complete or not at all).

    Args:
        images: ``(S, H, W)`` or ``(S, H, W, 3)`` uint8, model frame.
        labels: ``(S, H, W)`` uint16 raw label values, model frame.
        objects: the case's objects (``slice`` indexes axis 0 of ``images``).
        meta: the ``meta.json`` content (see module docstring).
    """
    if images.dtype != np.uint8 or labels.dtype != np.uint16 or images.shape[:3] != labels.shape:
        raise ValueError(f"case {case_id}: images {images.dtype}{images.shape} / labels {labels.dtype}"
                         f"{labels.shape} do not fit the format")
    final = case_dir(out, case_id)
    with atomic_dir(final) as tmp:
        np.save(tmp / "images.npy", np.ascontiguousarray(images))
        np.save(tmp / "labels.npy", np.ascontiguousarray(labels))
        (tmp / "objects.json").write_text(json.dumps([o.to_dict() for o in objects]) + "\n")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return final


def write_manifest(out: str | os.PathLike[str], manifest: dict) -> Path:
    """Write ``manifest.json`` atomically (call it last: it marks the dataset complete)."""
    path = Path(out) / "manifest.json"
    write_json_atomic(path, manifest)
    return path


class PreparedDataset:
    """Read access to a prepared dataset folder (see the module docstring for the format).

    Arrays are memory-mapped: ``images(case_id)`` is ``(S, H, W)`` or ``(S, H, W, 3)`` uint8 and
    ``labels(case_id)`` ``(S, H, W)`` uint16, both in the model frame (``H = W = image_size``).
    """

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        path = self.root / "manifest.json"
        if not path.is_file():
            raise DatasetError(f"{path}: missing; run `samadapt prepare` into {self.root} (or let it finish)")
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise DatasetError(f"{path}: unreadable or not JSON ({type(err).__name__}); "
                               "delete it and rerun `samadapt prepare`") from None
        if not isinstance(manifest, dict) or any(key not in manifest for key in _MANIFEST_KEYS):
            missing = [k for k in _MANIFEST_KEYS if not isinstance(manifest, dict) or k not in manifest]
            raise DatasetError(f"{path}: not a samadapt manifest (missing {', '.join(missing)}); "
                               "rerun `samadapt prepare`")
        if manifest["format_version"] != FORMAT_VERSION:
            raise DatasetError(f"{path}: format_version {manifest['format_version']} is not supported "
                               f"(expected {FORMAT_VERSION}); rerun `samadapt prepare`")
        try:
            cases = {str(c["case_id"]): c for c in manifest["cases"]}
            bad = [c["case_id"] for c in manifest["cases"] if c["split"] not in SPLITS]
            names = [str(c["name"]) for c in manifest["classes"]]
        except (TypeError, KeyError):
            raise DatasetError(f"{path}: malformed 'cases' or 'classes' entries; "
                               "rerun `samadapt prepare`") from None
        if bad:
            raise DatasetError(f"{path}: cases {bad[:3]} have an unknown split; "
                               f"use one of {', '.join(SPLITS)}")
        image_size = manifest["image_size"]
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise DatasetError(f"{path}: image_size {image_size!r} is not a positive integer; rerun `samadapt prepare`")
        objects: dict[str, list[SliceObject]] = {}
        metas: dict[str, dict] = {}
        for case_id, row in cases.items():
            folder = self.root / "cases" / case_id
            n_slices, objects[case_id], metas[case_id] = check_case(folder, image_size)
            if row.get("n_slices", n_slices) != n_slices:
                raise DatasetError(f"{folder / 'images.npy'}: holds {n_slices} slices, but {path.name} lists "
                                   f"{row['n_slices']}; {_REBUILD}")
        self.manifest: dict = manifest
        self.image_size: int = image_size
        self.classes: list[dict] = list(manifest["classes"])
        self.class_names: list[str] = names
        self.hash: str = str(manifest["hash"])
        # the cases' contents without the split (manifests written before it existed: the whole hash)
        self.content_hash: str = str(manifest.get("content_hash", manifest["hash"]))
        self._cases = cases
        self._objects: dict[str, list[SliceObject]] = objects
        self._meta: dict[str, dict] = metas

    def __repr__(self) -> str:
        return f"PreparedDataset({str(self.root)!r}, cases={len(self._cases)}, image_size={self.image_size})"

    def _folder(self, case_id: str) -> Path:
        if case_id not in self._cases:
            raise DatasetError(f"{self.root / 'manifest.json'}: no case '{case_id}'; "
                               f"known cases: {', '.join(list(self._cases)[:5])}...")
        return self.root / "cases" / case_id

    def case_ids(self, split: str | None = None) -> list[str]:
        """Case ids in manifest order, optionally only those of ``split`` ("train", "val", "test")."""
        if split is not None and split not in SPLITS:
            raise DatasetError(f"split '{split}' is unknown; use one of {', '.join(SPLITS)}")
        return [cid for cid, c in self._cases.items() if split is None or c["split"] == split]

    def split_of(self, case_id: str) -> str:
        """The split ("train", "val" or "test") the manifest gives ``case_id``."""
        self._folder(case_id)
        return str(self._cases[case_id]["split"])

    def select_classes(self, classes: Sequence[str] | None, setting: str = "classes") -> list[str]:
        """``classes`` checked against this dataset's class names, or all of them when ``classes`` is None.

        Raises :class:`~samadapt.errors.ConfigError` naming ``setting`` (e.g. "adapt setting classes") and the
        classes the dataset lacks."""
        if classes is None:
            return list(self.class_names)
        unknown = [c for c in classes if c not in self.class_names]
        if unknown:
            raise ConfigError(f"{setting}: {', '.join(unknown)} not in {self.root} (classes: "
                              f"{', '.join(self.class_names)})")
        return list(classes)

    def images(self, case_id: str) -> np.ndarray:
        """``(S, H, W)`` or ``(S, H, W, 3)`` uint8, memory-mapped read-only."""
        return np.load(self._folder(case_id) / "images.npy", mmap_mode="r")

    def labels(self, case_id: str) -> np.ndarray:
        """``(S, H, W)`` uint16 raw label values, memory-mapped read-only."""
        return np.load(self._folder(case_id) / "labels.npy", mmap_mode="r")

    def objects(self, case_id: str) -> list[SliceObject]:
        """The case's objects, in file order (by slice, then class / instance); read when the dataset opened."""
        self._folder(case_id)
        return list(self._objects[case_id])

    def meta(self, case_id: str) -> dict:
        """The case's ``meta.json`` (source paths, geometry, axis, slice indices, spacings); read on opening."""
        self._folder(case_id)
        return dict(self._meta[case_id])

    def object_mask(self, case_id: str, obj: SliceObject) -> np.ndarray:
        """``(H, W)`` bool mask of ``obj`` in the model frame: ``np.isin(labels[obj.slice], obj.values)``."""
        return np.isin(self.labels(case_id)[obj.slice], obj.values)
