"""The ProMISe adapter: APM and/or IPS around a frozen SAM, and its file format.

An adapter never holds SAM's weights. Its files, in a run folder of ``samadapt adapt``::

    adapter.pt     state dict of :class:`PromiseAdapter` (APM and IPS tensors only), torch.save
    adapter.json   sidecar: format, base model (registry name or path) and the sha256 of its weights,
                   classes, architecture (:class:`AdapterSpec`), mode, config, training summary

``best_adapter.pt`` / ``best_adapter.json`` are the same for the step of best validation score.
:func:`load_adapter` reads them back; :func:`load_base_model` loads the frozen SAM it was trained on and
checks that its weights are the very ones (same sha256), because an adapter fits one SAM only.

Using an adapter (what ``samadapt.inference`` builds on), for one slice and class ``k``::

    points, labels = adapter.auto_points(features, k)              # 1x3xDxgxg -> 1xNx2, 1xN
    decoder = SamDecoder.for_adapter(sam, adapter)                 # SAM, mask tokens shifted by IPS if any
    low_res, iou = decoder(embedding, points=(points, labels), multimask=adapter.multimask)
    logits = low_res[:, 0]                                         # 1x4gx4g: output 0 in both modes
    present = adapter.presence_probability(features, k)            # 1, or None without a presence head

(:func:`samadapt.promise.automatic.decode_automatic` does this for every class at once.)

With user prompts instead of APM points (the adapter stays promptable), pass ``points``/``boxes`` and the
same shift.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from samadapt.errors import CheckpointError
from samadapt.io.atomic import atomic_path, write_json_atomic
from samadapt.models.sam import LoadedModel, load_sam, sam_digest
from samadapt.promise.apm import build_apm
from samadapt.promise.ips import IncrementalPatternShift
from samadapt.prompts.point_sets import fixed_point_labels

ADAPTER_FILE = "adapter.pt"
BEST_ADAPTER_FILE = "best_adapter.pt"
FORMAT = "samadapt-promise-adapter"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class AdapterSpec:
    """Architecture of an adapter: what :class:`PromiseAdapter` needs to be rebuilt before loading weights.

    ``feature_dim`` / ``feature_levels`` / ``grid``: the encoder features it reads (``3xDxgxg``);
    ``transformer_dim`` / ``num_mask_tokens``: SAM's decoder width ``C`` and mask tokens ``T``;
    ``multimask``: decode with SAM's three ambiguity outputs and take the first (ProMISe's choice) instead
    of the single-mask output.
    """

    classes: tuple[str, ...]
    image_size: int
    feature_dim: int
    feature_levels: int
    grid: int
    transformer_dim: int
    num_mask_tokens: int
    has_apm: bool
    has_ips: bool
    apm_kind: str = "resnet"
    apm_size: str = "small"
    num_points: int = 16
    num_positive: int = 8
    presence_head: bool = True
    ips_hidden: int = 0
    multimask: bool = True

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "classes": list(self.classes)}

    @classmethod
    def from_dict(cls, data: dict) -> AdapterSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: tuple(v) if k == "classes" else v for k, v in data.items() if k in known})


class PromiseAdapter(nn.Module):
    """APM (``apm``, or None) and IPS (``ips``, or None) for one frozen SAM; see the module docstring.

    Attributes: ``base_model`` (registry name or checkpoint path of the frozen SAM), ``base_digest`` (sha256
    of its weights), ``classes`` (the APM's classes, in head order), ``has_apm``, ``has_ips``, ``spec``.
    """

    def __init__(self, spec: AdapterSpec, base_model: str = "", base_digest: str = ""):
        super().__init__()
        self.spec = spec
        self.base_model, self.base_digest = str(base_model), str(base_digest)
        self.classes: list[str] = list(spec.classes)
        self.has_apm, self.has_ips = bool(spec.has_apm), bool(spec.has_ips)
        self.apm = None if not spec.has_apm else build_apm(
            spec.apm_kind, spec.feature_dim, spec.feature_levels, spec.grid, len(spec.classes), spec.num_points,
            spec.image_size, spec.apm_size, spec.presence_head)
        self.ips = None if not spec.has_ips else IncrementalPatternShift(
            spec.transformer_dim, spec.num_mask_tokens, spec.ips_hidden)

    @property
    def multimask(self) -> bool:
        """Decode with ``multimask=True`` (and take output 0, the first ambiguity output) as in training; False:
        the single-mask output (also output 0)."""
        return bool(self.spec.multimask)

    def _require_apm(self) -> nn.Module:
        if self.apm is None:
            raise CheckpointError(f"adapter for '{self.base_model}' has no APM (trained with mode=ips); give "
                                  "prompts, or train one with `samadapt adapt --set mode=apm+ips`")
        return self.apm

    def checked_class_index(self, class_index: int) -> int:
        """``class_index`` as an int into :attr:`classes`; ``IndexError`` naming the classes when out of range."""
        if not 0 <= int(class_index) < len(self.classes):
            raise IndexError(f"class index {class_index} out of range for classes {self.classes}")
        return int(class_index)

    def point_labels(self, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """``BxN`` long: the fixed APM labels (the first ``num_positive`` 1, the rest 0)."""
        n_pos = self.spec.num_positive
        return fixed_point_labels(n_pos, self.spec.num_points - n_pos, device).expand(batch, -1).clone()

    def predict_points(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Every class at once: ``Bx3xDxgxg`` -> (points ``BxKxNx2`` model-input px, presence logits ``BxK``
        or None)."""
        return self._require_apm()(features.float())

    def auto_points(self, features: torch.Tensor, class_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """APM point prompts of one class.

        Args:
            features: ``Bx3xDxgxg`` float32 encoder block outputs (the embedding cache's features).
            class_index: index into :attr:`classes`.
        Returns:
            points ``BxNx2`` float XY in model-input pixels, labels ``BxN`` long (1 positive, 0 negative).
        """
        k = self.checked_class_index(class_index)
        points, _ = self.predict_points(features)
        return points[:, k], self.point_labels(points.shape[0], points.device)

    def presence_probability(self, features: torch.Tensor, class_index: int) -> torch.Tensor | None:
        """``B`` probabilities that class ``class_index`` is on each slice, or None without a presence head."""
        k = self.checked_class_index(class_index)
        _, presence = self.predict_points(features)
        return None if presence is None else torch.sigmoid(presence[:, k])

    def token_shift(self, embedding: torch.Tensor) -> torch.Tensor | None:
        """IPS shift ``BxTxC`` of the mask tokens from image embeddings ``BxCxgxg``; None without IPS."""
        return None if self.ips is None else self.ips(embedding.float())

    def trainable_parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())


def adapter_sidecar(path: str | os.PathLike[str]) -> Path:
    """``adapter.pt`` -> ``adapter.json``."""
    return Path(path).with_suffix(".json")


def save_adapter(adapter: PromiseAdapter, path: str | os.PathLike[str], info: dict | None = None) -> Path:
    """Write the adapter's weights and its JSON sidecar, both atomically (SAM's weights are not saved)."""
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in adapter.state_dict().items()}
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(state, tmp)
    write_json_atomic(adapter_sidecar(path), {
        "format": FORMAT, "format_version": FORMAT_VERSION, "base_model": adapter.base_model,
        "base_digest": adapter.base_digest, "classes": adapter.classes, "has_apm": adapter.has_apm,
        "has_ips": adapter.has_ips, "architecture": adapter.spec.to_dict(), **(info or {})})
    return path


def adapter_file(path: str | os.PathLike[str]) -> Path:
    """The adapter weights file that ``path`` names: a run folder's ``adapter.pt``, or the file itself."""
    path = Path(path)
    if path.is_dir():
        found = path / ADAPTER_FILE
        if not found.is_file():
            raise CheckpointError(f"{path}: no {ADAPTER_FILE} in this folder; finish the run with "
                                  f"`samadapt adapt PREPARED --out {path} --resume` or pass the adapter file")
        return found
    if not path.is_file():
        raise CheckpointError(f"{path}: no such adapter; pass a `samadapt adapt` run folder or its {ADAPTER_FILE}")
    return path


def read_adapter_sidecar(path: str | os.PathLike[str]) -> dict:
    """The sidecar of adapter file or run folder ``path``, checked to be a ProMISe adapter's."""
    file = adapter_file(path)
    sidecar = adapter_sidecar(file)
    try:
        info = json.loads(sidecar.read_text())
    except OSError:
        raise CheckpointError(f"{sidecar}: missing; an adapter needs its sidecar, copy it beside {file.name} "
                              "or rerun `samadapt adapt`") from None
    except ValueError as err:
        raise CheckpointError(f"{sidecar}: invalid JSON ({err}); restore the file or rerun `samadapt adapt`") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise CheckpointError(f"{sidecar}: not a ProMISe adapter sidecar (format {FORMAT!r} expected); pass the "
                              "adapter of a `samadapt adapt` run")
    if info.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{sidecar}: adapter format_version {info.get('format_version')} is not supported "
                              f"(expected {FORMAT_VERSION}); retrain with this samadapt")
    return info


def load_adapter(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> PromiseAdapter:
    """Load a ProMISe adapter (run folder or adapter file) on ``device``, in eval mode.

    Raises:
        CheckpointError: no adapter there, a missing or broken sidecar, or weights that do not fit it.
    """
    file = adapter_file(path)
    info = read_adapter_sidecar(file)
    try:
        spec = AdapterSpec.from_dict(dict(info["architecture"]))
        adapter = PromiseAdapter(spec, str(info["base_model"]), str(info.get("base_digest", "")))
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{adapter_sidecar(file)}: architecture entry is incomplete or wrong ({err}); "
                              "rerun `samadapt adapt`") from None
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt files
        raise CheckpointError(f"{file}: not a loadable weights-only adapter ({type(err).__name__}); restore it or "
                              "rerun `samadapt adapt`") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{file}: does not hold a state dict of tensors; pass a `samadapt adapt` adapter")
    try:
        adapter.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{file}: weights do not fit the sidecar's architecture ({first}); keep "
                              f"{file.name} and {adapter_sidecar(file).name} of the same run together") from None
    return adapter.to(device).eval()


def check_base_model(adapter: PromiseAdapter, loaded: LoadedModel) -> None:
    """:class:`CheckpointError` unless ``loaded`` carries exactly the weights the adapter was trained on."""
    if adapter.base_digest and sam_digest(loaded.sam) != adapter.base_digest:
        where = loaded.checkpoint or loaded.spec.name
        raise CheckpointError(f"{where}: not the SAM this adapter was trained on (its weights differ from base "
                              f"model '{adapter.base_model}' at training time); pass that model or retrain with "
                              "`samadapt adapt`")


def load_base_model(adapter: PromiseAdapter, device: str | torch.device = "cpu") -> LoadedModel:
    """The frozen SAM of ``adapter`` (by its ``base_model``), verified by :func:`check_base_model`."""
    loaded = load_sam(adapter.base_model, device=device)
    check_base_model(adapter, loaded)
    loaded.sam.requires_grad_(False)
    return loaded
