"""One open volume of the web app: its windowed slices, a Segmenter, the label volume, previews and undo.

A session shares the server's model (one :class:`~samadapt.models.sam.LoadedModel`) but has its own
:class:`~samadapt.inference.segmenter.Segmenter`, so the embeddings of its slices are cached per slice
and window: the first prompt on a slice runs the image encoder, every further click only the decoder.

The window a slice is shown in is also the window the model sees ("what you see is what SAM sees"). CT
volumes (told apart by :func:`~samadapt.inference.volume_slices.guess_modality`) offer the CT presets and
percentiles and open in ``abdomen`` (``samadapt prepare``'s default); other volumes use percentiles.

Labels: a ``uint8`` ``(Z, Y, X)`` array on the volume's grid; classes get values 1, 2, ... in the order
they are first used (at most 255). A prediction is a preview until it is committed under a class; each
commit can be undone (``undo_depth`` deep).
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from samadapt.data.windowing import CT_PRESETS, parse_window
from samadapt.errors import ConfigError, InputFileError, PromptError, SamadaptError
from samadapt.inference.segmenter import Segmenter
from samadapt.inference.volume_slices import VolumeSlices, guess_modality
from samadapt.io.volume import Volume, check_path_encodable, read_geometry, read_header, write_volume
from samadapt.models.sam import LoadedModel
from samadapt.serve.encoding import png_bytes, run_lengths
from samadapt.serve.schemas import AutoRequest, CommitRequest, PromptRequest

MAX_CLASSES = 255
KEPT_PREDICTIONS = 32
KEPT_WINDOWS = 3


class SessionNotFoundError(SamadaptError):
    """No open volume has this id (closed, or dropped for a newer one)."""


class VolumeTooLargeError(InputFileError):
    """A volume has more voxels than the server accepts."""


class NothingToUndoError(SamadaptError):
    """The undo stack of a session is empty."""


class AutoUnavailableError(SamadaptError):
    """Automatic mode was asked for without an adapter that has an APM."""


@dataclass
class ServeSettings:
    """Limits and resources of ``samadapt serve``.

    - ``data_dir``: the folder volumes may be opened from (None: uploads only).
    - ``max_upload_bytes``: largest accepted upload (HTTP 413 beyond).
    - ``max_voxels``: largest volume accepted, from its header, before reading voxels (HTTP 413 beyond);
      2**27 (a 512 x 512 x 512 CT) by default. Its voxel data may also take at most
      :func:`volume_byte_budget` bytes (4 per voxel: a float32 volume at the voxel limit), which also bounds
      how far an upload is decompressed (:func:`~samadapt.serve.decompress.gunzip_within`).
    - ``max_body_bytes``: largest request body other than an upload (HTTP 413 beyond, refused before it is
      read in full; see :mod:`samadapt.serve.body_limit`). The API's JSON bodies take a few hundred bytes.
    - ``max_sessions``: open volumes kept; opening one more drops the least recently used (its labels too).
    - ``max_cached_slices``: embedding cache per session (slices).
    - ``undo_depth``: commits that can be undone per session.
    - ``device``: torch device of the model.
    - ``decoder``: ``torch``, or ``onnx`` to run every click's decoder in onnxruntime (CPU; see
      :mod:`samadapt.inference.onnx_decoding`).
    """

    data_dir: Path | None = None
    max_upload_bytes: int = 512 * 1024 * 1024
    max_voxels: int = 2**27
    max_body_bytes: int = 64 * 1024
    max_sessions: int = 4
    max_cached_slices: int = 64
    undo_depth: int = 50
    device: str = "cpu"
    decoder: str = "torch"


BYTES_PER_VOXEL = 4  # of the byte budget: a float32 volume may reach the voxel limit, a float64 one half of it
HEADER_BYTES = 1 << 20  # room for a file's header and extensions in the budget of a decompressed upload


def volume_byte_budget(max_voxels: int) -> int:
    """Bytes a volume's voxel data may take under a voxel limit of ``max_voxels`` (see :class:`ServeSettings`)."""
    return BYTES_PER_VOXEL * max_voxels


def check_volume_header(path: Path, max_voxels: int, shown_name: str) -> None:
    """:class:`VolumeTooLargeError` unless a volume's header gives at most ``max_voxels`` voxels, and at most
    :func:`volume_byte_budget` bytes of them in its voxel type. A 2D or 3D file is judged by its header alone
    (no voxel is read); a DICOM folder, or a file of another dimension, by what reading it gives."""
    check_path_encodable(path)
    reader = read_header(path)
    if reader is not None and reader.GetDimension() in (2, 3):
        size = reader.GetSize()
    else:  # (an unreadable file: reading it reports what is wrong with it)
        size = read_geometry(path).size
    voxels = int(np.prod(size, dtype=np.int64))
    if voxels > max_voxels:
        raise VolumeTooLargeError(f"{shown_name}: {voxels} voxels exceed this server's limit of {max_voxels}; "
                                  "crop or resample the volume")
    voxel_bytes = voxels * (_bytes_per_voxel(reader) if reader is not None else 1)
    if voxel_bytes > volume_byte_budget(max_voxels):
        raise VolumeTooLargeError(f"{shown_name}: {voxel_bytes} bytes of voxels exceed this server's limit of "
                                  f"{volume_byte_budget(max_voxels)}; convert it to a smaller voxel type, crop "
                                  "or resample it")


def _bytes_per_voxel(reader: sitk.ImageFileReader) -> int:
    """Bytes per voxel (all components) of the image whose header ``reader`` holds."""
    one = sitk.Image([1] * reader.GetDimension(), reader.GetPixelID(), reader.GetNumberOfComponents())
    return sitk.GetArrayViewFromImage(one).itemsize * reader.GetNumberOfComponents()


class VolumeSession:
    """An opened volume; every method runs under the session store's compute lock (see :class:`SessionStore`)."""

    def __init__(self, name: str, volume: Volume, loaded: LoadedModel, adapter: Any, settings: ServeSettings,
                 owned_file: Path | None = None, onnx: Any = None):
        self.id = uuid.uuid4().hex
        self.name = name
        self.volume = volume
        self.modality = guess_modality(volume.array)
        self.segmenter = Segmenter(loaded, settings.device, settings.max_cached_slices, adapter, onnx=onnx)
        self.settings = settings
        self.owned_file = owned_file
        self.default_window = "abdomen" if self.modality == "CT" else "percentiles"
        self.windows = [*CT_PRESETS, "percentiles"] if self.modality == "CT" else ["percentiles"]
        self._slices: OrderedDict[str, VolumeSlices] = OrderedDict()
        first = self.slices("default")
        self.labels = first.empty_labels(MAX_CLASSES)
        self.classes: list[str] = list(self.segmenter.classes)
        self._predictions: OrderedDict[str, tuple[int, np.ndarray]] = OrderedDict()
        self._undo: list[tuple[int, np.ndarray]] = []
        self.last_used = time.monotonic()

    def close(self) -> None:
        """Drop the uploaded file this session owns (if any)."""
        if self.owned_file is not None:
            self.owned_file.unlink(missing_ok=True)

    # ----------------------------------------------------------------- slices and windows

    def slices(self, window: str) -> VolumeSlices:
        """The volume windowed as ``window`` (``default``, a preset, ``W,L`` or ``percentiles``), kept for reuse."""
        name = self.default_window if window == "default" else window
        if self.modality != "CT" and name != "percentiles":
            raise ConfigError(f"window '{name}': this volume is not CT (no Hounsfield units); use percentiles")
        resolved = parse_window(name).resolve(self.modality)
        key = json.dumps(resolved.to_dict(), sort_keys=True)
        if key not in self._slices:
            self._slices[key] = VolumeSlices.from_volume(self.volume, resolved, "axial", self.modality)
            while len(self._slices) > KEPT_WINDOWS:
                self._slices.popitem(last=False)
        self._slices.move_to_end(key)
        return self._slices[key]

    def _use(self, window: str, index: int) -> VolumeSlices:
        slices = self.slices(window)
        slices.check_index(index)
        self.segmenter.set_volume(slices)
        self.last_used = time.monotonic()
        return slices

    def describe(self) -> dict:
        """What the page needs to show the volume."""
        slices = self.slices("default")
        sx, sy, sz = self.volume.geometry.spacing
        return {"id": self.id, "name": self.name, "n_slices": slices.n_slices, "height": slices.slice_hw[0],
                "width": slices.slice_hw[1], "pixel_spacing": [sy, sx], "slice_spacing": sz,
                "modality": self.modality, "windows": self.windows, "default_window": self.default_window,
                "classes": self.class_table(), "auto": self.segmenter.has_auto,
                "auto_classes": self.segmenter.classes if self.segmenter.has_auto else []}

    def slice_png(self, index: int, window: str) -> bytes:
        return png_bytes(self._use(window, index).slice(index))

    def voxel(self, index: int, x: int, y: int) -> dict:
        """The raw intensity (HU for CT) and patient position (mm) of pixel ``(x, y)`` of slice ``index``."""
        slices = self.slices("default")
        z_, y_, x_ = slices.voxel_index(index, y, x)
        value = self.volume.array[z_, y_, x_]
        return {"slice": index, "x": x, "y": y, "index_xyz": [x_, y_, z_],
                "value": int(value) if np.issubdtype(value.dtype, np.integer) else float(value),
                "unit": "HU" if self.modality == "CT" else "",
                "position_mm": list(self.volume.geometry.physical_point((x_, y_, z_)))}

    def label_slice(self, index: int) -> dict:
        slices = self.slices("default")
        return {"slice": index, "labels": run_lengths(slices.labels_slice(self.labels, index)),
                "classes": self.class_table()}

    # ----------------------------------------------------------------- segmentation

    def embed(self, index: int, window: str) -> dict:
        """Compute (or find) the embedding of a slice ahead of the first click."""
        self._use(window, index)
        t0 = time.perf_counter()
        embedded_now = not self.segmenter.is_embedded(index)
        self.segmenter.prepare_decoder(index)  # the embedding, and the onnx decoder's per-slice terms
        return {"slice": index, "embedded_now": embedded_now, "server_ms": 1000 * (time.perf_counter() - t0)}

    def _preview(self, index: int, mask: np.ndarray, score: float, t0: float, embedded_now: bool,
                 points: np.ndarray | None = None) -> dict:
        prediction_id = uuid.uuid4().hex
        self._predictions[prediction_id] = (index, mask)
        while len(self._predictions) > KEPT_PREDICTIONS:
            self._predictions.popitem(last=False)
        answer = {"prediction_id": prediction_id, "slice": index, "mask": run_lengths(mask), "area": int(mask.sum()),
                  "score": float(score), "embedded_now": embedded_now,
                  "server_ms": 1000 * (time.perf_counter() - t0)}
        if points is not None:
            answer["points"] = np.asarray(points).reshape(-1, 2).round(2).tolist()
        return answer

    def predict(self, request: PromptRequest) -> dict:
        """Preview the mask of one prompt (box and/or clicks) on one slice."""
        self._use(request.window, request.slice)
        t0 = time.perf_counter()
        embedded_now = not self.segmenter.is_embedded(request.slice)
        points = np.asarray(request.points, dtype=np.float64).reshape(1, -1, 2) if request.points else None
        prediction = self.segmenter.predict(
            boxes=None if request.box is None else np.asarray([request.box], dtype=np.float64),
            points=points, labels=np.asarray([request.labels]) if request.points else None,
            slice_index=request.slice)
        return self._preview(request.slice, prediction.masks[0, 0], prediction.scores[0, 0], t0, embedded_now)

    def predict_auto(self, request: AutoRequest) -> dict:
        """Preview the adapter's automatic mask of one class on one slice (with the APM's points)."""
        if not self.segmenter.has_auto:
            raise AutoUnavailableError("automatic mode needs a ProMISe adapter with an APM; restart the server with "
                                  "--adapter RUN")
        self._use(request.window, request.slice)
        t0 = time.perf_counter()
        embedded_now = not self.segmenter.is_embedded(request.slice)
        prediction = self.segmenter.predict_auto(request.class_name, slice_index=request.slice)
        return self._preview(request.slice, prediction.masks[0, 0], prediction.scores[0, 0], t0, embedded_now,
                             prediction.points)

    # ----------------------------------------------------------------- labels

    def class_table(self) -> dict[str, int]:
        """``{"background": 0, class: value, ...}``."""
        return {"background": 0, **{name: i + 1 for i, name in enumerate(self.classes)}}

    def _class_value(self, name: str) -> int:
        if name == "background":
            return 0
        if name not in self.classes:
            if len(self.classes) >= MAX_CLASSES:
                raise PromptError(f"this volume already has {MAX_CLASSES} classes; reuse one")
            self.classes.append(name)
        return self.classes.index(name) + 1

    def commit(self, request: CommitRequest) -> dict:
        """Write a previewed mask into the labels as ``class_name`` (``background`` erases)."""
        if request.prediction_id not in self._predictions:
            raise PromptError("this preview is no longer kept; prompt again and assign the new mask")
        index, mask = self._predictions[request.prediction_id]
        value = self._class_value(request.class_name)
        slices = self.slices("default")
        self._undo.append((index, slices.labels_slice(self.labels, index)))
        del self._undo[: -self.settings.undo_depth]
        slices.paint(self.labels, index, mask, value)
        return self.label_slice(index)

    def undo(self) -> dict:
        """Revert the last commit; returns the slice it touched."""
        if not self._undo:
            raise NothingToUndoError("nothing to undo")
        index, previous = self._undo.pop()
        self.slices("default").put_labels_slice(self.labels, index, previous)
        return self.label_slice(index)

    def labels_nifti(self) -> bytes:
        """The label volume as ``.nii.gz`` bytes with the volume's exact geometry."""
        with tempfile.TemporaryDirectory(prefix="samadapt-labels-") as folder:
            path = write_volume(self.labels, self.volume.geometry, Path(folder) / "labels.nii.gz")
            return path.read_bytes()


class SessionStore:
    """Open sessions by id, at most ``max_sessions`` (least recently used dropped); one compute lock.

    The lock serialises all model work: sessions share one SAM, and encoder feature hooks must not
    interleave. CPU inference gains nothing from running two requests at once anyway.
    """

    def __init__(self, max_sessions: int):
        if max_sessions < 1:
            raise ConfigError("max_sessions must be at least 1")
        self.max_sessions = max_sessions
        self.lock = threading.RLock()
        self._sessions: OrderedDict[str, VolumeSession] = OrderedDict()

    def add(self, session: VolumeSession) -> VolumeSession:
        with self.lock:
            self._sessions[session.id] = session
            while len(self._sessions) > self.max_sessions:
                _, dropped = self._sessions.popitem(last=False)
                dropped.close()
        return session

    def get(self, session_id: str) -> VolumeSession:
        with self.lock:
            if session_id not in self._sessions:
                raise SessionNotFoundError("no open volume with this id (closed, or dropped for a newer one); "
                                      "open the volume again")
            self._sessions.move_to_end(session_id)
            return self._sessions[session_id]

    def remove(self, session_id: str) -> None:
        with self.lock:
            session = self._sessions.pop(session_id, None)
        if session is not None:
            session.close()

    def close_all(self) -> None:
        with self.lock:
            for session in self._sessions.values():
                session.close()
            self._sessions.clear()
