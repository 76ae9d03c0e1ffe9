"""The embedding cache: SAM's frozen image encoder run once per prepared slice, stored in fp16.

The encoder is about 95% of SAM's compute. Training and evaluation read these files and run only the
prompt encoder and the mask decoder.

Layout of a cache folder (by default ``<prepared.root>/embeddings/<signature[:16]>/``)::

    cache.json                   signature, model, architecture, dtype, shapes, per-case progress
    <case_id>.npy                (S, C, g, g) float16 image embeddings (neck output)
    <case_id>.features.npy       (S, 3, D, g, g) float16 encoder block outputs (only with features)
    <case_id>.npy.partial        the same while a case is being computed (and its .features twin)
    cache.rank<r>.json           per-case progress of rank r while a torchrun job runs (folded into
                                 cache.json by rank 0; see :mod:`samadapt.models.cache_shards`)
    .samadapt.lock               while a job runs: its lock, naming its pid, host and command

``S`` is the case's number of slices, ``C = spec.prompt_embed_dim``, ``g = spec.embedding_size`` and
``D = spec.encoder_embed_dim``. Features are the outputs of the encoder blocks
``spec.feature_block_indexes`` (about 1/2, 3/4 and the end of the ViT; ProMISe's multi-level features),
captured with forward hooks and moved to channels-first.

The **signature** is a sha256 over the image encoder's weights (tensor bytes in state-dict order) and
architecture, the preprocessing (pixel mean/std, image size), the prepared dataset's ``content_hash``
(its cases' contents, the split left out: re-splitting with ``prepare --split-file`` or
``--split-group`` keeps the cache) and the features flag. A cache is used only with the model and data
that produced it. Any mismatch raises :class:`~samadapt.errors.CacheError`; a cache is never reused
silently.

Computation resumes within a case. Each batch is written into a ``.partial`` memmap, then the slice
counter in ``cache.json`` advances (atomically). A run that stops continues after the last finished
batch, and a finished case is renamed to its final name. Batches never cross case boundaries. With the
same batch size, a resumed run therefore produces the same bytes as an uninterrupted one.

One job per cache folder: the job (rank 0 of a ``torchrun`` job) holds the folder's lock
(:mod:`samadapt.io.folder_lock`, ``.samadapt.lock``) while it runs, and a second one is refused naming the
first. At its start the job removes the temporaries of killed atomic writes and checks that the disk has
room for what is left; each ``.partial`` is then allocated in full before it is memory-mapped, so a full
disk is a :class:`~samadapt.errors.StorageError` (one line on the command line), never a SIGBUS from a
page of a sparse file that finds no space.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from samadapt.errors import CacheError, ConfigError, DatasetError, StorageError, storage_error
from samadapt.io.atomic import remove_stale_temporaries, write_json_atomic
from samadapt.io.folder_lock import FolderLock, lock_folder
from samadapt.models.cache_shards import assign_cases, fold_shard_progress, shard_progress_path
from samadapt.models.encoder_features import capture_features
from samadapt.models.preprocess import to_model_input
from samadapt.models.registry import FAMILY_FIELDS, ModelSpec
from samadapt.models.sam import LoadedModel, update_tensor_digest
from samadapt.progress import Progress
from samadapt.runtime import Ranks, resolve_device

CACHE_FORMAT = 1
CACHE_FILE = "cache.json"
STORE_DTYPE = np.float16
_ENCODER_FIELDS = (
    "encoder_embed_dim", "encoder_depth", "encoder_num_heads", "encoder_global_attn_indexes", "image_size",
    "patch_size", "window_size", "prompt_embed_dim", "pixel_mean", "pixel_std",
)

# progress (samadapt.progress.Progress) counts slices: called once at the start (when the first case's files are
# allocated, so that a full disk is reported before any bar) and after every batch; never when there is nothing
# left to compute (a finished cache shows no progress at all)


class PreparedLike(Protocol):
    """What the cache needs from :class:`samadapt.data.prepared.PreparedDataset`."""

    root: Path
    image_size: int
    hash: str

    def case_ids(self, split: str | None = None) -> list[str]: ...
    def images(self, case_id: str) -> np.ndarray: ...
    def meta(self, case_id: str) -> dict: ...


def embedding_shape(spec: ModelSpec) -> tuple[int, int, int]:
    """``(C, g, g)``: the shape of one slice's image embedding."""
    return (spec.prompt_embed_dim, spec.embedding_size, spec.embedding_size)


def feature_shape(spec: ModelSpec) -> tuple[int, int, int, int]:
    """``(3, D, g, g)``: the shape of one slice's multi-level encoder features."""
    g = spec.embedding_size
    return (len(spec.feature_block_indexes), spec.encoder_embed_dim, g, g)


def bytes_per_slice(spec: ModelSpec, with_features: bool) -> dict[str, int]:
    """Disk bytes per slice: ``{"embeddings", "features", "total"}`` (fp16 payload, npy header excluded)."""
    item = np.dtype(STORE_DTYPE).itemsize
    emb = int(np.prod(embedding_shape(spec))) * item
    feat = int(np.prod(feature_shape(spec))) * item if with_features else 0
    return {"embeddings": emb, "features": feat, "total": emb + feat}


def encoder_digest(loaded: LoadedModel) -> str:
    """sha256 over the image encoder's weights (state-dict order), its architecture and preprocessing."""
    digest = hashlib.sha256(f"samadapt-embedding-cache-v{CACHE_FORMAT}\n".encode())
    arch = loaded.spec.architecture()
    fields = {k: arch[k] for k in _ENCODER_FIELDS} | {k: arch[k] for k in FAMILY_FIELDS if k in arch}
    digest.update(json.dumps(fields, sort_keys=True).encode())
    update_tensor_digest(digest, loaded.sam.image_encoder.state_dict())
    return digest.hexdigest()


def cache_signature(
    loaded: LoadedModel, prepared_hash: str, with_features: bool, digest: str | None = None
) -> str:
    """The cache signature: :func:`encoder_digest` + the prepared dataset's hash + the features flag.

    ``digest`` may pass a precomputed :func:`encoder_digest` (hashing ViT-B's weights takes ~1 s).
    """
    digest = digest or encoder_digest(loaded)
    payload = {
        "encoder": digest, "prepared": str(prepared_hash), "with_features": bool(with_features),
        "feature_blocks": list(loaded.spec.feature_block_indexes) if with_features else [],
        "dtype": np.dtype(STORE_DTYPE).name,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def cache_signatures(
    loaded: LoadedModel, prepared: PreparedLike, with_features: bool, digest: str | None = None
) -> list[str]:
    """The signatures a cache of ``loaded`` on ``prepared`` may carry, the current one first: keyed by the
    dataset's ``content_hash`` (its cases without the split, so a re-split keeps the cache), then, for a
    cache written before that existed, by its whole ``hash``."""
    digest = digest or encoder_digest(loaded)
    content = getattr(prepared, "content_hash", prepared.hash)
    signatures = [cache_signature(loaded, content, with_features, digest)]
    if content != prepared.hash:
        signatures.append(cache_signature(loaded, prepared.hash, with_features, digest))
    return signatures


def default_cache_dir(prepared: PreparedLike, signature: str) -> Path:
    """``<prepared.root>/embeddings/<signature[:16]>``."""
    return Path(prepared.root) / "embeddings" / signature[:16]


def _final_paths(root: Path, case_id: str) -> tuple[Path, Path]:
    return root / f"{case_id}.npy", root / f"{case_id}.features.npy"


class EmbeddingCache:
    """Read access to a computed cache folder (see the module docstring for the layout).

    Arrays are memory-mapped read-only: :meth:`embeddings` gives ``(S, C, g, g)`` float16 and
    :meth:`features` ``(S, 3, D, g, g)`` float16, with axis 0 indexing the prepared case's slices.
    """

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        path = self.root / CACHE_FILE
        if not path.is_file():
            raise CacheError(f"{path}: no embedding cache here; run `samadapt embed` to compute it")
        try:
            info = json.loads(path.read_text())
            str(info["signature"]), dict(info["cases"]), bool(info["with_features"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CacheError(
                f"{path}: unreadable cache description ({type(err).__name__}); delete {self.root} and rerun "
                "`samadapt embed`"
            ) from None
        self.info: dict[str, Any] = info

    def __repr__(self) -> str:
        model, n = self.info.get("model"), len(self.case_ids)
        return f"EmbeddingCache({str(self.root)!r}, model={model!r}, cases={n})"

    @property
    def signature(self) -> str:
        """The sha256 signature of the model, preprocessing and data this cache was computed with."""
        return str(self.info["signature"])

    @property
    def has_features(self) -> bool:
        """Whether the multi-level encoder features were stored too."""
        return bool(self.info["with_features"])

    @property
    def case_ids(self) -> list[str]:
        """Ids of the cases whose embeddings are complete."""
        return [cid for cid, state in self.info["cases"].items() if state.get("complete")]

    @property
    def bytes_per_slice(self) -> dict[str, int]:
        """Disk bytes per slice: ``{"embeddings", "features", "total"}``."""
        return dict(self.info["bytes_per_slice"])

    def is_complete(self, case_ids: list[str]) -> bool:
        """True when every case of ``case_ids`` is finished."""
        done = set(self.case_ids)
        return all(cid in done for cid in case_ids)

    def _load(self, path: Path, case_id: str) -> np.ndarray:
        if case_id not in self.info["cases"] or not self.info["cases"][case_id].get("complete"):
            raise CacheError(
                f"{self.root}: no finished embeddings for case '{case_id}'; rerun `samadapt embed` to "
                "finish it"
            )
        try:
            return np.load(path, mmap_mode="r")
        except (OSError, ValueError) as err:
            raise CacheError(
                f"{path}: missing or unreadable ({type(err).__name__}); delete it and rerun `samadapt embed`"
            ) from None

    def embeddings(self, case_id: str) -> np.ndarray:
        """``(S, C, g, g)`` float16 image embeddings of a case, memory-mapped."""
        return self._load(_final_paths(self.root, case_id)[0], case_id)

    def features(self, case_id: str) -> np.ndarray:
        """``(S, 3, D, g, g)`` float16 encoder block outputs of a case, memory-mapped."""
        if not self.has_features:
            raise CacheError(
                f"{self.root}: computed without encoder features; rerun `samadapt embed --features`"
            )
        return self._load(_final_paths(self.root, case_id)[1], case_id)


def encode_slices(
    loaded: LoadedModel,
    images: np.ndarray,
    valid_hw: tuple[int, int] | np.ndarray | None = None,
    with_features: bool = False,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, np.ndarray | None]:
    """Run the frozen image encoder on one batch of model-frame slices.

    Runs under ``torch.inference_mode``: fp32 on CPU, bf16 autocast on CUDA. The encoder must already
    be on ``device``. On the CPU the model's ``encoder_runtime`` decides: a TinyViT with ``auto`` (the
    default) or ``onnx`` runs in onnxruntime (:func:`samadapt.models.onnx_encoder.use_encoder_runtime`).

    Args:
        images: ``BxSxS`` or ``BxSxSx3`` uint8 in the model frame (``S = spec.image_size``).
        valid_hw: unpadded ``(h, w)`` or ``Bx2`` of them (see
            :func:`~samadapt.models.preprocess.to_model_input`).

    Returns:
        ``(B, C, g, g)`` float16 embeddings and, with features, ``(B, 3, D, g, g)`` float16 (else None).
    """
    encoder = loaded.sam.image_encoder
    device = torch.device(device)
    x = to_model_input(images, loaded.spec, valid_hw)
    if loaded.encoder_runtime == "auto" and device.type == "cpu":
        from samadapt.models.onnx_encoder import use_encoder_runtime

        use_encoder_runtime(loaded, "auto", device)
    if loaded.onnx_encoder is not None and device.type == "cpu":
        emb, feats = loaded.onnx_encoder(x.numpy())
        return emb.astype(np.float16), feats.astype(np.float16) if with_features else None
    x = x.to(device)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    )
    indexes = loaded.spec.feature_block_indexes if with_features else ()
    with torch.inference_mode(), autocast, capture_features(encoder, loaded.spec, indexes) as captured:
        emb = encoder(x)
        feats = torch.stack([captured[i] for i in indexes], dim=1) if with_features else None
    emb_np = emb.to(torch.float16).cpu().numpy()
    feats_np = feats.to(torch.float16).cpu().numpy() if feats is not None else None
    return emb_np, feats_np


class LiveEmbeddings:
    """Embeddings of a prepared dataset computed on demand by the model's current encoder (no disk cache).

    For models whose encoder is being trained (LoRA), where a cache would be stale after the next step.
    Offers ``embeddings(case_id)`` like :class:`EmbeddingCache` (``(S, C, g, g)`` float16); the last case
    is kept in memory, so slice-by-slice reads of one case encode it once.
    """

    def __init__(self, prepared: PreparedLike, loaded: LoadedModel, batch_size: int = 8,
                 device: str | torch.device = "cpu"):
        self.prepared, self.loaded, self.batch_size, self.device = prepared, loaded, batch_size, device
        loaded.encoder_runtime, loaded.onnx_encoder = "torch", None  # an exported graph would be stale next step
        self._last: tuple[str, np.ndarray] | None = None

    def embeddings(self, case_id: str) -> np.ndarray:
        if self._last is None or self._last[0] != case_id:
            images = self.prepared.images(case_id)
            valid_hw = tuple(self.prepared.meta(case_id)["valid_hw"])
            parts = [encode_slices(self.loaded, np.array(images[i : i + self.batch_size]), valid_hw,
                                   device=self.device)[0] for i in range(0, len(images), self.batch_size)]
            self._last = (case_id, np.concatenate(parts))
        return self._last[1]


def _npy_header(shape: tuple[int, ...]) -> bytes:
    """The ``.npy`` header numpy writes for a C-ordered array of ``shape`` in the cache's dtype."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {
        "descr": np.lib.format.dtype_to_descr(np.dtype(STORE_DTYPE)), "fortran_order": False, "shape": tuple(shape)})
    return buffer.getvalue()


def npy_file_size(shape: tuple[int, ...]) -> int:
    """Bytes of the ``.npy`` file (header + fp16 payload) that holds an array of ``shape``."""
    return len(_npy_header(shape)) + int(np.prod(shape)) * np.dtype(STORE_DTYPE).itemsize


def _allocate(fd: int, size: int) -> None:
    """Give the open file ``size`` bytes of real disk blocks up front.

    A sparse file would find the disk full only when a memory map first writes a page, and the process
    would die by SIGBUS; allocated now, a full disk is an ``OSError`` (ENOSPC) before anything is written.
    Without ``posix_fallocate`` (macOS) zeros are written past the file's end.
    """
    try:
        os.posix_fallocate(fd, 0, size)
        return
    except AttributeError:
        pass
    except OSError as err:
        if err.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
    zeros = bytes(1 << 20)
    position = os.fstat(fd).st_size
    while position < size:
        position += os.pwrite(fd, zeros[: min(len(zeros), size - position)], position)


def _open_partial(path: Path, shape: tuple[int, ...], resume: bool) -> np.memmap:
    """Reopen a ``.partial`` memmap of ``shape`` for writing, or create it (fresh) when that fails.

    Either way the file's disk space is allocated before it is mapped (see :func:`_allocate`); when that
    fails, :class:`~samadapt.errors.StorageError` names the file, and a fresh file is removed again.
    """
    mm = None
    if resume and path.is_file():
        try:
            mm = np.lib.format.open_memmap(path, mode="r+")
        except (OSError, ValueError):
            mm = None
        if mm is not None and (mm.shape != shape or mm.dtype != STORE_DTYPE):
            mm = None
    fresh = mm is None
    try:
        fd = os.open(path, os.O_RDWR | (os.O_CREAT | os.O_TRUNC if fresh else 0), 0o666)
        try:
            header = _npy_header(shape) if fresh else b""
            written = 0
            while written < len(header):
                written += os.write(fd, header[written:])
            _allocate(fd, npy_file_size(shape))  # (a resumed partial of an older version gets its holes filled)
        finally:
            os.close(fd)
    except BaseException as err:
        if fresh:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
        translated = storage_error(err, path, override=True)
        if translated is None:
            raise
        raise translated from None
    return mm if mm is not None else np.lib.format.open_memmap(path, mode="r+")


def _bytes_to_allocate(root: Path, cases: dict, n_slices: dict[str, int], spec: ModelSpec,
                       with_features: bool) -> int:
    """Disk bytes the unfinished cases still need: their full files, less what their ``.partial`` files
    already hold on disk."""
    need = 0
    for cid, S in n_slices.items():
        if _case_is_finished(root, cid, cases.get(cid, {}), with_features):
            continue
        shapes = [(S, *embedding_shape(spec))] + ([(S, *feature_shape(spec))] if with_features else [])
        for final, shape in zip(_final_paths(root, cid), shapes, strict=False):
            partial = final.with_name(final.name + ".partial")
            held = getattr(partial.stat(), "st_blocks", 0) * 512 if partial.is_file() else 0
            need += max(0, npy_file_size(shape) - held)
    return need


def _size_text(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _check_free_space(root: Path, need: int) -> None:
    """Raise :class:`~samadapt.errors.StorageError` when ``root``'s disk has less than ``need`` bytes free."""
    free = shutil.disk_usage(root).free
    if need > free:
        raise StorageError(
            f"{root}: the embedding cache needs {_size_text(need)} more disk space but only {_size_text(free)} "
            "is free there; free some space or put the cache on another disk (embed --out), then rerun"
        )


def _check_prepared(prepared: PreparedLike, spec: ModelSpec) -> None:
    if int(prepared.image_size) != spec.image_size:
        raise ConfigError(
            f"{prepared.root}: prepared at {prepared.image_size} px but model '{spec.name}' takes "
            f"{spec.image_size} px; rerun `samadapt prepare` with --image-size {spec.image_size} or pick "
            "another model"
        )


def _cache_info(root: Path, signature: str, prepared: PreparedLike, loaded: LoadedModel, with_features: bool) -> dict:
    """The folder's ``cache.json`` contents (verified against ``signature``), or a fresh description."""
    info_path = root / CACHE_FILE
    if info_path.is_file():
        info = EmbeddingCache(root).info
        if info["signature"] != signature:
            raise CacheError(
                f"{root}: holds embeddings computed with another model or data (or --features setting); "
                "delete the folder or choose another output folder"
            )
        return info
    spec = loaded.spec
    return {
        "format": CACHE_FORMAT, "signature": signature, "model": spec.name,
        "checkpoint": str(loaded.checkpoint) if loaded.checkpoint else None,
        "architecture": spec.architecture(), "prepared_root": str(prepared.root),
        "prepared_hash": getattr(prepared, "content_hash", prepared.hash), "dtype": np.dtype(STORE_DTYPE).name,
        "with_features": with_features,
        "embedding_shape": list(embedding_shape(spec)),
        "feature_shape": list(feature_shape(spec)) if with_features else None,
        "feature_blocks": list(spec.feature_block_indexes) if with_features else None,
        "bytes_per_slice": bytes_per_slice(spec, with_features), "cases": {},
    }


def _case_is_finished(root: Path, case_id: str, state: dict, with_features: bool) -> bool:
    emb_final, feat_final = _final_paths(root, case_id)
    return bool(state.get("complete")) and emb_final.is_file() and (feat_final.is_file() or not with_features)


def _embed_case(
    prepared: PreparedLike,
    loaded: LoadedModel,
    root: Path,
    case_id: str,
    state: dict,
    batch_size: int,
    with_features: bool,
    device: torch.device,
    save: Callable[[], None],
    report: Callable[[], None],
    begin: Callable[[], None] = lambda: None,
) -> None:
    """Embed one case into ``<case_id>.npy`` (and its features twin), continuing after ``state["done_slices"]``.

    ``state`` (the case's progress record) is updated in place; ``save()`` (which writes it) is called after
    every batch and once the case's files carry their final names, ``report()`` after every batch, and
    ``begin()`` once the case's files are allocated, before its first batch.
    """
    spec = loaded.spec
    emb_final, feat_final = _final_paths(root, case_id)
    images = prepared.images(case_id)
    S = int(images.shape[0])
    emb_part = emb_final.with_name(emb_final.name + ".partial")
    feat_part = feat_final.with_name(feat_final.name + ".partial")
    start = int(state.get("done_slices", 0)) if not state.get("complete") else 0
    resume = start > 0 and emb_part.is_file() and (feat_part.is_file() or not with_features)
    start = start if resume else 0
    if images.shape[1:3] != (spec.image_size, spec.image_size):
        raise DatasetError(
            f"{Path(prepared.root) / 'cases' / case_id}: slices are {tuple(images.shape[1:3])}, not the "
            f"manifest's {spec.image_size} px; rerun `samadapt prepare`"
        )
    emb_mm = _open_partial(emb_part, (S, *embedding_shape(spec)), resume)
    feat_mm = _open_partial(feat_part, (S, *feature_shape(spec)), resume) if with_features else None
    begin()
    state.clear()
    state.update({"n_slices": S, "done_slices": start, "complete": False})
    valid_hw = prepared.meta(case_id).get("valid_hw")
    valid = None if valid_hw is None else np.asarray(valid_hw, dtype=np.int64)
    for lo in range(start, S, batch_size):
        hi = min(lo + batch_size, S)
        hw = valid[lo:hi] if valid is not None and valid.ndim == 2 else valid
        emb, feats = encode_slices(loaded, np.array(images[lo:hi]), hw, with_features, device)
        emb_mm[lo:hi] = emb
        emb_mm.flush()
        if feat_mm is not None:
            feat_mm[lo:hi] = feats
            feat_mm.flush()
        state["done_slices"] = hi
        save()
        report()
    del emb_mm, feat_mm
    if with_features:
        os.replace(feat_part, feat_final)
    os.replace(emb_part, emb_final)
    state["complete"] = True
    save()


def compute_embeddings(
    prepared: PreparedLike,
    loaded: LoadedModel,
    out: str | os.PathLike[str] | None = None,
    batch_size: int = 8,
    with_features: bool = False,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
    ranks: Ranks | None = None,
) -> EmbeddingCache:
    """Embed every slice of a prepared dataset with the frozen image encoder, resuming any earlier run.

    Args:
        prepared: a :class:`~samadapt.data.prepared.PreparedDataset` at the model's image size.
        loaded: the model. Only its image encoder runs. It is moved to ``device`` for the run and back
            afterwards.
        out: cache folder; default ``<prepared.root>/embeddings/<signature[:16]>``.
        batch_size: slices per encoder call. Resuming with another batch size works, but the bytes are
            then only fp16-close to an uninterrupted run.
        with_features: also store the multi-level block outputs (``(S, 3, D, g, g)`` per case).
        device: where the encoder runs (``"cpu"``, ``"cuda"``, ...).
        progress: ``progress(done_slices, total_slices)`` over the slices of the cases this rank owns (all
            of them in one process), called at the start (see the module's note on progress) and after every batch; not
            at all when this rank has nothing left to compute (a finished cache), so a caller's bar need not
            appear.
        ranks: the ``torchrun`` job this call is part of (:func:`samadapt.runtime.current`);
            every rank must call it alike. Cases are split over the ranks and merged into one cache, the
            same bytes as one process (see :mod:`samadapt.models.cache_shards`). Default: one process.

    Returns:
        The finished :class:`EmbeddingCache` (on every rank).

    Raises:
        CacheError: ``out`` holds a cache computed with another model, data or features flag.
        ConfigError: the dataset was prepared at another image size than the model's.
    """
    ranks = ranks or Ranks()
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    device = resolve_device(device)
    _check_prepared(prepared, loaded.spec)
    signature, *legacy = cache_signatures(loaded, prepared, with_features)
    root = Path(out) if out is not None else default_cache_dir(prepared, signature)
    for old in legacy:  # a cache made before content hashes, for this very split: go on with it
        if out is None and not (root / CACHE_FILE).is_file() and (default_cache_dir(prepared, old)
                                                                   / CACHE_FILE).is_file():
            signature, root = old, default_cache_dir(prepared, old)
    info_path = root / CACHE_FILE
    case_ids = prepared.case_ids()

    n_slices = {cid: int(prepared.images(cid).shape[0]) for cid in case_ids}
    lock: FolderLock | None = None
    created = ranks.is_main and not root.exists()
    try:
        info, error = None, None
        if ranks.is_main:  # the one reader-writer of cache.json; it folds what an earlier job's ranks left
            try:
                root.mkdir(parents=True, exist_ok=True)
                lock = lock_folder(root)  # no second job on this cache (one lock per job: rank 0 holds it)
                remove_stale_temporaries(root)
                info = _cache_info(root, signature, prepared, loaded, with_features)
                folded = fold_shard_progress(root, info, case_ids)
                if folded:
                    write_json_atomic(info_path, info)
                    for path in folded:
                        path.unlink(missing_ok=True)
                _check_free_space(root, _bytes_to_allocate(root, info["cases"], n_slices, loaded.spec,
                                                           with_features))
            except Exception as err:  # every rank must hear of it, or the others wait forever
                error = err
        ranks.raise_together(error)
        info = ranks.broadcast(info)
        _embed_owned(prepared, loaded, root, info, case_ids, n_slices, batch_size, with_features, device,
                     progress, ranks)
        error = None
        if ranks.is_main and (ranks.world > 1 or not info_path.is_file()):
            # merge the ranks' progress (or leave a valid empty cache for a dataset without cases)
            try:
                folded = fold_shard_progress(root, info, case_ids)
                write_json_atomic(info_path, info)
                for path in folded:
                    path.unlink(missing_ok=True)
            except Exception as err:
                error = err
        ranks.raise_together(error)
    except BaseException:
        if lock is not None:
            lock.release()
            lock = None
        if created:  # a cache folder this call made goes again when the call wrote nothing into it
            with contextlib.suppress(OSError):
                root.rmdir()
        raise
    finally:
        if lock is not None:
            lock.release()
    return EmbeddingCache(root)


def _embed_owned(prepared: PreparedLike, loaded: LoadedModel, root: Path, info: dict, case_ids: list[str],
                 n_slices: dict[str, int], batch_size: int, with_features: bool, device: torch.device,
                 progress: Progress | None, ranks: Ranks) -> None:
    """Embed this rank's share of the unfinished cases (progress into cache.json, or the rank's own file)."""
    cases: dict[str, dict] = info["cases"]
    if ranks.world == 1:  # one process: progress lives in cache.json itself
        record, record_path = info, root / CACHE_FILE
    else:
        record, record_path = {"signature": info["signature"], "rank": ranks.rank, "cases": {}}, (
            shard_progress_path(root, ranks.rank))

    def remaining(cid: str) -> int:
        state = record["cases"].get(cid) or cases.get(cid, {})  # this rank's own progress first
        if _case_is_finished(root, cid, state, with_features):
            return 0
        return n_slices[cid] - (0 if state.get("complete") else int(state.get("done_slices", 0)))

    owned = assign_cases({cid: remaining(cid) for cid in case_ids}, ranks.world)[ranks.rank]
    total = sum(n_slices[cid] for cid in owned)

    def report() -> None:
        if progress is not None:
            progress(sum(n_slices[c] - remaining(c) for c in owned), total)

    def save() -> None:
        write_json_atomic(record_path, record)

    encoder = loaded.sam.image_encoder
    home = next(encoder.parameters()).device
    encoder.to(device)
    started: list[bool] = []

    def begin() -> None:  # the first report waits for the first case's files: a full disk then prints alone
        if not started:
            started.append(True)
            report()

    error = None
    try:
        for cid in owned:
            if remaining(cid) == 0:
                continue
            state = dict(cases.get(cid, {}))
            record["cases"][cid] = state
            _embed_case(prepared, loaded, root, cid, state, batch_size, with_features, device, save, report, begin)
    except Exception as err:
        error = err
    finally:
        encoder.to(home)
    ranks.raise_together(error)


def open_cache(
    prepared: PreparedLike,
    loaded: LoadedModel,
    with_features: bool = False,
    root: str | os.PathLike[str] | None = None,
) -> EmbeddingCache:
    """Open the finished cache of ``loaded`` on ``prepared``, verifying signature and completeness.

    Without ``with_features``, a cache computed with features serves as well: it holds the same
    embeddings. ``root`` overrides the default location ``<prepared.root>/embeddings/<signature[:16]>``.

    Raises:
        CacheError: no cache, a cache of another model or data, or an unfinished one.
    """
    _check_prepared(prepared, loaded.spec)
    digest = encoder_digest(loaded)
    accepted = cache_signatures(loaded, prepared, with_features, digest)
    if not with_features:
        accepted += cache_signatures(loaded, prepared, True, digest)
    if root is None:
        folders = [default_cache_dir(prepared, sig) for sig in accepted]
        found = [f for f in folders if (f / CACHE_FILE).is_file()]
        if not found:
            features = " --features" if with_features else ""
            raise CacheError(
                f"{Path(prepared.root) / 'embeddings'}: no embedding cache for model '{loaded.spec.name}' on "
                f"this data; run `samadapt embed {prepared.root}{features}` with that model"
            )
        root = found[0]
    cache = EmbeddingCache(root)
    if cache.signature not in accepted:
        raise CacheError(
            f"{cache.root}: embedding cache was computed with another model or data"
            f"{' or without features' if with_features else ''}; rerun `samadapt embed`"
        )
    missing = [cid for cid in prepared.case_ids() if cid not in set(cache.case_ids)]
    if missing:
        n_cases = len(prepared.case_ids())
        raise CacheError(
            f"{cache.root}: embedding cache is incomplete ({len(missing)} of {n_cases} cases missing, "
            f"e.g. '{missing[0]}'); rerun `samadapt embed` to finish it"
        )
    return cache


def ensure_cache(prepared: PreparedLike, loaded: LoadedModel, with_features: bool = False,
                 device: str | torch.device = "cpu", ranks: Ranks | None = None,
                 progress: Progress | None = None) -> EmbeddingCache:
    """The finished cache of ``loaded`` on ``prepared`` (with features when asked), computed first when missing.

    Without features, any finished cache of the model serves: one computed with ``--features`` holds the
    same embeddings, so ``train`` after ``embed --features`` reads it instead of writing a second cache.
    """
    ranks = ranks or Ranks()
    if not with_features:
        try:
            return open_cache(prepared, loaded)
        except CacheError:
            pass
    compute_embeddings(prepared, loaded, with_features=with_features, device=device,
                       progress=progress if ranks.is_main else None, ranks=ranks)
    return open_cache(prepared, loaded, with_features=with_features)
