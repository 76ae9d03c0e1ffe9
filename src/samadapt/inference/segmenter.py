"""The Segmenter: embed an image (or the slices of a volume) once, decode many prompts on it.

Like ``segment_anything.SamPredictor``, with what medical images need on top:

- models from the registry, a SAM-format ``.pth`` or a ``samadapt train`` run folder
  (:func:`~samadapt.inference.model_source.load_model`);
- :meth:`Segmenter.set_image` for one 2D image, :meth:`Segmenter.set_volume` for a volume (file, DICOM
  folder or :class:`~samadapt.io.volume.Volume`) windowed and oriented as ``samadapt prepare`` does
  (:class:`~samadapt.inference.volume_slices.VolumeSlices`); slice embeddings are computed on first use
  and kept in a least-recently-used cache of ``max_cached_slices`` slices;
- :meth:`Segmenter.predict` decodes N prompts at once on one embedding (boxes, clicks, previous masks, in
  any combination), with coordinates in the *original* image (or slice) frame and masks back at its size
  (see :mod:`samadapt.inference.image_frame` for the frames and conversions);
- :meth:`Segmenter.predict_auto`: prompt-free masks through a ProMISe adapter's APM, where one is given.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from samadapt.data.frame import frame_shape, to_model_frame_image
from samadapt.errors import ConfigError, PromptError
from samadapt.inference.embedding_lru import EmbeddingLRU, SliceEmbedding
from samadapt.inference.image_frame import ImageFrame
from samadapt.inference.model_source import load_model, model_classes
from samadapt.inference.volume_slices import VolumeSlices
from samadapt.io.volume import Volume
from samadapt.models.decoder import Decoder, SamDecoder
from samadapt.models.embedding_cache import encode_slices
from samadapt.models.onnx_encoder import use_encoder_runtime
from samadapt.models.registry import DEFAULT_MODEL
from samadapt.models.sam import LoadedModel
from samadapt.promise.adapter import check_base_model, load_adapter, load_base_model
from samadapt.promise.automatic import class_index, decode_automatic
from samadapt.runtime import resolve_device

DEFAULT_CACHED_SLICES = 64
DECODE_CHUNK = 32  # prompts per decoder call: bounds memory for big batches (the image embedding is repeated)
_IMAGE_KEYS = itertools.count()


@dataclass
class Prediction:
    """Masks of N prompts on one image, in its original frame.

    - ``masks``: ``NxKxhxw`` bool (K = 3 with ``multimask``, else 1), logits thresholded at 0.
    - ``scores``: ``NxK`` float32, the decoder's predicted IoU of each mask.
    - ``low_res_logits``: ``NxKx4gx4g`` float32 tensor over the model frame; pass
      ``low_res_logits[:, k:k+1]`` as ``mask_input`` to refine mask ``k`` with further clicks.
    - ``points`` / ``point_labels``: the point prompts used, ``NxPx2`` XY original pixels and ``NxP``
      (automatic mode: the APM's points); None when none were used.
    - ``presence``: automatic mode only, the adapter's ``N`` probabilities that the class is on the slice
      (None without a presence head).
    """

    masks: np.ndarray
    scores: np.ndarray
    low_res_logits: torch.Tensor
    points: np.ndarray | None = None
    point_labels: np.ndarray | None = None
    presence: np.ndarray | None = None


def _prompt_count(what: str, value: np.ndarray | torch.Tensor | None, count: int | None) -> int | None:
    if value is None:
        return count
    n = int(value.shape[0])
    if count is not None and n != count:
        raise PromptError(f"{what} holds {n} prompts but the other prompts hold {count}; give one row per object")
    return n


def _as_array(value: Any, what: str, trailing: tuple[int | None, ...]) -> np.ndarray | None:
    """``value`` as float64 with a leading batch axis added when it has ``len(trailing)`` axes."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise PromptError(f"{what} is not numeric; give numbers in the documented shape") from None
    if array.ndim == len(trailing):
        array = array[None]
    shape_ok = array.ndim == len(trailing) + 1 and all(
        want is None or got == want for got, want in zip(array.shape[1:], trailing, strict=True))
    if not shape_ok:
        dims = "x".join("N" if t is None else str(t) for t in (None, *trailing))
        raise PromptError(f"{what} has shape {tuple(array.shape)}; expected {dims} (a leading N may be left out)")
    return array


class Segmenter:
    """Embed once, decode many prompts. Not thread-safe: give each thread its own, or lock around calls.

    Args:
        loaded: the SAM model (moved to ``device``).
        device: torch device for the encoder and decoder.
        max_cached_slices: LRU bound of the embedding cache, in slices (see
            :mod:`samadapt.inference.embedding_lru` for the memory per slice).
        adapter: a ProMISe adapter (``samadapt.promise.load_adapter``), or None. With one, prompted masks
            use its IPS shift too (the adapted model stays promptable) and :meth:`predict_auto` works
            where it has an APM. It must belong to ``loaded`` (checked by :meth:`from_model`).
        encode_batch_size: slices per encoder call in :meth:`embed`.
        onnx: an :class:`~samadapt.inference.onnx_decoding.OnnxDecoding` of the same model and adapter to
            run :meth:`predict`'s decoder in onnxruntime (CPU only; several times faster per click than eager
            torch on a CPU), or None for torch. The image encoder and :meth:`predict_auto` stay in torch.

    Attributes: ``decoder``, the :class:`~samadapt.models.decoder.Decoder` of :meth:`predict` (``onnx``, else
    the torch :class:`~samadapt.models.decoder.SamDecoder` with the adapter's IPS shift), and
    ``torch_decoder``, the latter (what :meth:`predict_auto` uses).
    """

    def __init__(self, loaded: LoadedModel, device: str | torch.device = "cpu",
                 max_cached_slices: int = DEFAULT_CACHED_SLICES, adapter: Any = None, encode_batch_size: int = 8,
                 onnx: Any = None):
        self.device = resolve_device(device)
        if onnx is not None and self.device.type != "cpu":
            raise ConfigError(f"onnxruntime decoding runs on the CPU, not {self.device}; "
                              "use device cpu, or decode with torch")
        self.onnx = onnx
        self.loaded = loaded
        self.loaded.sam.to(self.device).eval()
        self.adapter = adapter
        self.torch_decoder = SamDecoder.for_adapter(self.loaded.sam, adapter)
        self.decoder: Decoder = onnx if onnx is not None else self.torch_decoder
        if isinstance(encode_batch_size, bool) or not isinstance(encode_batch_size, int) or encode_batch_size < 1:
            raise ConfigError(f"encode batch size {encode_batch_size!r}: give at least 1")
        self.encode_batch_size = encode_batch_size
        self.cache = EmbeddingLRU(max_cached_slices)
        self.encoder_calls = 0
        self._image: np.ndarray | None = None
        self._image_key: str | None = None
        self.volume: VolumeSlices | None = None

    @classmethod
    def from_model(cls, model: str | os.PathLike[str] | None = DEFAULT_MODEL, device: str | torch.device = "cpu",
                   adapter: str | os.PathLike[str] | None = None, encoder_runtime: str = "auto",
                   **kwargs: Any) -> Segmenter:
        """A Segmenter for a registry name, ``.pth`` file or run folder; with ``adapter``, a ProMISe adapter.

        ``model=None`` with an adapter uses the adapter's own base model; a model given with an adapter must
        be that very SAM (same weights), else :class:`~samadapt.errors.CheckpointError`. ``encoder_runtime``
        (``auto``, ``torch``, ``onnx``): see :mod:`samadapt.models.onnx_encoder`.
        """
        loaded_adapter = load_adapter(adapter, device) if adapter is not None else None
        if model is None:
            if loaded_adapter is None:
                raise ConfigError("no model given; pass a registry name, a .pth file or a run folder")
            loaded = load_base_model(loaded_adapter, device)
        else:
            loaded = load_model(model, device=device)
            if loaded_adapter is not None:
                check_base_model(loaded_adapter, loaded)
        use_encoder_runtime(loaded, encoder_runtime, resolve_device(device))
        return cls(loaded, device=device, adapter=loaded_adapter, **kwargs)

    # ------------------------------------------------------------------ what the model is

    @property
    def sam(self):
        """The ``segment_anything`` :class:`Sam` module."""
        return self.loaded.sam

    @property
    def image_size(self) -> int:
        """``S``: the side of the model frame."""
        return self.loaded.spec.image_size

    @property
    def has_auto(self) -> bool:
        """Whether :meth:`predict_auto` works: an adapter with an auto-prompting module is loaded."""
        return self.adapter is not None and bool(getattr(self.adapter, "has_apm", False))

    @property
    def classes(self) -> list[str]:
        """Class names the model knows: the adapter's, else a fine-tuned model's sidecar's, else ``[]``."""
        if self.adapter is not None:
            return [str(c) for c in self.adapter.classes]
        return model_classes(self.loaded)

    def _needs_features(self) -> bool:
        return self.has_auto

    # ------------------------------------------------------------------ images and volumes

    def set_image(self, image: np.ndarray) -> None:
        """Use one 2D image: ``HxW`` or ``HxWx3`` ``uint8`` display intensities (window CT / MR first).

        Its embedding is computed here, once; every :meth:`predict` without ``slice_index`` reuses it.
        """
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
            raise ConfigError(f"set_image takes HxW or HxWx3 uint8 images, got {image.dtype} {image.shape}; "
                              "window the intensities first (samadapt.data.windowing) or use set_volume")
        if min(image.shape[:2]) < 1:
            raise ConfigError(f"image of shape {image.shape} is empty")
        self._image = np.ascontiguousarray(image)
        self._image_key = f"image{next(_IMAGE_KEYS)}"
        self.embedding()

    def set_volume(self, volume: Volume | VolumeSlices | str | os.PathLike[str], window: str = "auto",
                   axis: str = "axial", modality: str | None = None) -> VolumeSlices:
        """Use a volume: a path (NIfTI, NRRD, MHA, DICOM folder), a :class:`Volume` or ready :class:`VolumeSlices`.

        Windowing and orientation follow ``samadapt prepare`` (``window``: CT preset, ``"W,L"``,
        ``percentiles``, ``none`` or ``auto``; ``modality`` resolves ``auto``, guessed when None). Nothing is
        encoded yet: a slice is embedded on its first prompt (or ahead with :meth:`embed`). Returns the
        slices; prompts then name a ``slice_index`` and use that slice's frame.
        """
        slices = volume if isinstance(volume, VolumeSlices) else VolumeSlices.from_volume(volume, window, axis,
                                                                                          modality)
        self.volume = slices
        return slices

    def _source(self, slice_index: int | None) -> tuple[str, np.ndarray | None, tuple[int, int]]:
        """(cache key, image or None when not needed yet, original hw) of the image a prompt refers to."""
        if slice_index is None:
            if self._image is None:
                raise ConfigError("no image set: call set_image first, or pass slice_index after set_volume")
            return self._image_key, self._image, self._image.shape[:2]
        if self.volume is None:
            raise ConfigError("no volume set: call set_volume before predicting on a slice")
        index = self.volume.check_index(slice_index)
        return f"{self.volume.key}:{index}", None, self.volume.slice_hw

    def _encode(self, images: list[np.ndarray]) -> list[SliceEmbedding]:
        framed = np.stack([to_model_frame_image(image, self.image_size) for image in images])
        valid = np.array([frame_shape(*image.shape[:2], self.image_size) for image in images], dtype=np.int64)
        emb, feats = encode_slices(self.loaded, framed, valid, self._needs_features(), self.device)
        self.encoder_calls += 1
        return [SliceEmbedding(emb[i : i + 1], None if feats is None else feats[i : i + 1]) for i in range(len(images))]

    def embed(self, slice_indices: Iterable[int]) -> int:
        """Embed the given volume slices that are not cached yet, in batches; returns how many were encoded.

        Only the last ``max_cached_slices`` stay cached: embed a chunk, use it, then embed the next.
        """
        if self.volume is None:
            raise ConfigError("no volume set: call set_volume before embedding slices")
        todo = [i for i in dict.fromkeys(self.volume.check_index(i) for i in slice_indices)
                if f"{self.volume.key}:{i}" not in self.cache]
        for lo in range(0, len(todo), self.encode_batch_size):
            chunk = todo[lo : lo + self.encode_batch_size]
            for index, value in zip(chunk, self._encode([self.volume.slice(i) for i in chunk]), strict=True):
                self.cache.put(f"{self.volume.key}:{index}", value)
        return len(todo)

    def is_embedded(self, slice_index: int | None = None) -> bool:
        """Whether the image (``None``) or volume slice ``slice_index`` has its embedding cached."""
        return self._source(slice_index)[0] in self.cache

    def embedding(self, slice_index: int | None = None) -> SliceEmbedding:
        """The cached embedding of the image (``slice_index=None``) or of a volume slice, computed if needed."""
        key, image, _ = self._source(slice_index)
        value = self.cache.get(key)
        if value is None:
            image = image if image is not None else self.volume.slice(slice_index)
            value = self._encode([image])[0]
            self.cache.put(key, value)
        return value

    def prepare_decoder(self, slice_index: int | None = None) -> None:
        """Embed the image (or volume slice) if needed and, with onnxruntime decoding, compute its
        prompt-independent decoder terms now, so that its first click costs what every later click costs."""
        value = self.embedding(slice_index)
        if self.onnx is not None:
            self.onnx.image_terms(value.embedding, image_key=self._source(slice_index)[0])

    # ------------------------------------------------------------------ decoding

    def predict(self, boxes: Any = None, points: Any = None, labels: Any = None, mask_input: Any = None,
                multimask: bool = False, slice_index: int | None = None) -> Prediction:
        """Masks for N prompts on one image (the set image, or volume slice ``slice_index``), in one pass.

        Args:
            boxes: ``Nx4`` (or ``4``) XYXY in original pixels (``x`` = column, ``y`` = row; a tight box's
                ``x1, y1`` is its last pixel).
            points: ``NxPx2`` (or ``Px2``) XY in original pixels; ``labels``: ``NxP`` (or ``P``), 1 positive,
                0 negative, -1 padding (for prompts with fewer clicks than P).
            mask_input: ``Nx1x4gx4g`` low-res logits from an earlier :class:`Prediction` (model frame).
            multimask: return SAM's three ambiguity masks per prompt instead of one.
            slice_index: the volume slice (slice frame); None for the image of :meth:`set_image`.

        Every given prompt kind must have the same N: row ``i`` of each forms object ``i``.
        Raises :class:`PromptError` for malformed prompts or coordinates outside the image.
        """
        key, _, hw = self._source(slice_index)
        frame = ImageFrame(hw, self.image_size)
        box_arr = _as_array(boxes, "boxes", (4,))
        point_arr = _as_array(points, "points", (None, 2))
        label_arr = _as_array(labels, "labels", (None,))
        if (point_arr is None) != (label_arr is None):
            raise PromptError("points and labels go together: give one label (1 positive, 0 negative) per point")
        if point_arr is not None and point_arr.shape[:2] != label_arr.shape:
            raise PromptError(f"labels have shape {label_arr.shape} but points {point_arr.shape[:2]}; "
                              "give one label per point")
        if label_arr is not None and not np.isin(label_arr, (-1, 0, 1)).all():
            raise PromptError("point labels must be 1 (positive), 0 (negative) or -1 (padding)")
        g4 = self.loaded.spec.low_res_mask_size
        mask_arr = _as_array(mask_input, "mask_input", (1, g4, g4))
        count = None
        for what, value in (("boxes", box_arr), ("points", point_arr), ("mask_input", mask_arr)):
            count = _prompt_count(what, value, count)
        if count is None or count == 0:
            raise PromptError("no prompt given: pass boxes, points (with labels) or mask_input")
        model_boxes = None if box_arr is None else torch.from_numpy(frame.boxes_to_model(box_arr))
        model_points = None
        if point_arr is not None:
            pad = label_arr < 0
            checked = np.where(pad[..., None], 0.0, point_arr)  # padding points may hold anything
            model_points = torch.from_numpy(frame.points_to_model(checked))
        cached = self.embedding(slice_index).embedding  # 1xCxgxg float16: the decoder converts it
        low_parts, iou_parts, mask_parts = [], [], []
        with torch.inference_mode():
            for lo in range(0, count, DECODE_CHUNK):
                rows = slice(lo, lo + DECODE_CHUNK)
                pts = None if model_points is None else (
                    model_points[rows].to(self.device), torch.from_numpy(label_arr[rows]).long().to(self.device))
                masks_in = None if mask_arr is None else torch.from_numpy(mask_arr[rows]).float()
                low_res, iou = self.decoder(
                    cached, points=pts, multimask=multimask, image_key=key,  # onnx keeps image terms per key
                    boxes=None if model_boxes is None else model_boxes[rows].to(self.device),
                    mask_logits=None if masks_in is None else masks_in.to(self.device))
                logits = frame.logits_to_original(self.sam, low_res)
                mask_parts.append((logits > self.sam.mask_threshold).cpu().numpy())
                low_parts.append(low_res.float().cpu())
                iou_parts.append(iou.float().cpu().numpy())
        return Prediction(np.concatenate(mask_parts), np.concatenate(iou_parts).astype(np.float32),
                          torch.cat(low_parts), None if point_arr is None else point_arr.astype(np.float32),
                          None if label_arr is None else label_arr.astype(np.int64))

    def predict_auto(self, class_name: str | int | None = None, slice_index: int | None = None,
                     presence_threshold: float | None = 0.5) -> Prediction:
        """A prompt-free mask for one class through the adapter's APM (and IPS shift), N = K = 1.

        ``class_name``: a name of :attr:`classes` or its 0-based index (None: the first). The rule of
        :mod:`samadapt.promise.automatic`: decoded as the adapter was trained (its ``multimask``, output 0);
        where the adapter has a presence head and its probability is below ``presence_threshold`` the mask
        is emptied (None keeps every mask). The APM's
        points come back in ``Prediction.points`` (original frame). Raises :class:`ConfigError` without
        an adapter that has an APM.
        """
        if self.adapter is None:
            raise ConfigError("automatic mode needs a ProMISe adapter; build the Segmenter with adapter=RUN "
                              "(samadapt adapt writes one) or prompt with boxes / points")
        if not self.has_auto:
            raise ConfigError("this ProMISe adapter has no auto-prompting module (APM); automatic mode needs one: "
                              "train it with `samadapt adapt --set mode=apm+ips`, or prompt with boxes / points")
        index = class_index(self.adapter, class_name)
        _, _, hw = self._source(slice_index)
        frame = ImageFrame(hw, self.image_size)
        cached = self.embedding(slice_index)
        with torch.inference_mode():
            emb = torch.from_numpy(np.asarray(cached.embedding, dtype=np.float32)).to(self.device)
            feats = torch.from_numpy(np.asarray(cached.features, dtype=np.float32)).to(self.device)
            auto = decode_automatic(self.adapter, self.torch_decoder, emb, feats, [index])
            logits = frame.logits_to_original(self.sam, auto.low_res)
            absent = auto.absent(presence_threshold).cpu().numpy()
        masks = (logits > self.sam.mask_threshold).cpu().numpy()
        masks[absent] = False
        presence_np = None if auto.presence is None else auto.presence.float().cpu().numpy().reshape(-1)
        return Prediction(masks, auto.iou.float().cpu().numpy(), auto.low_res.float().cpu(),
                          frame.points_to_original(auto.points.float().cpu().numpy()), auto.labels.long().cpu().numpy(),
                          presence_np)
