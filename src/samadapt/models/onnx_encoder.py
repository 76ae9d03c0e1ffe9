"""The image encoder in onnxruntime: the fast CPU encoder of the inference-only paths.

LiteMedSAM's TinyViT is ~75 GFLOP per 256 px slice, most of it depthwise and 1x1 convolutions at full
resolution, where torch's eager CPU kernels are slow; onnxruntime fuses the convolutions with their batch
norms and activations (``benchmarks/bench_encoder_runtime.py`` measures both). ``embed``, ``segment`` and
``serve`` use it on the CPU (``encoder_runtime``: ``auto`` = onnx for the ``tiny_vit`` family when
onnxruntime is installed, ``torch``, ``onnx``); training keeps torch (the encoder is frozen there and read
from the cache, or runs with gradients under LoRA).

The graph maps ``1x3xSxS`` float32 (the output of :func:`samadapt.models.preprocess.to_model_input`) to
``embeddings`` ``1xCxgxg`` and ``features`` ``1x3xDxgxg`` (the multi-level block outputs of
``spec.feature_block_indexes``, as :func:`samadapt.models.embedding_cache.encode_slices` captures them).
The batch is fixed at 1 (TinyViT's patch merging reads the batch size as a Python
int, which the tracer freezes; a batch buys nothing on a CPU anyway): batches run image by image. It is
exported once per encoder (its weights' digest names the file) into ``$SAMADAPT_CACHE/onnx/`` and
checked against torch on export; a later start reuses the file.

Decision: torch's TorchScript-based exporter (``dynamo=False``), as for the decoder
(:mod:`samadapt.export.onnx_decoder`): it needs neither network nor ``onnxscript``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from samadapt.errors import ConfigError
from samadapt.io.atomic import atomic_path
from samadapt.models.encoder_features import capture_features
from samadapt.models.registry import ModelSpec
from samadapt.models.sam import LoadedModel, cache_dir

RUNTIMES = ("auto", "torch", "onnx")
OPSET = 17
PARITY_TOLERANCE = 1e-3
"""Largest accepted |onnx - torch| on the embedding relative to its largest magnitude: float32 kernels in
another order differ by ~1e-6 relative per layer; 1e-3 is far above that and far below a wrong graph (O(1))."""


class EncoderGraph(nn.Module):
    """The image encoder plus its multi-level feature blocks, as one traceable module."""

    def __init__(self, encoder: nn.Module, spec: ModelSpec):
        super().__init__()
        self.encoder, self.spec = encoder, spec

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        indexes = self.spec.feature_block_indexes
        with capture_features(self.encoder, self.spec, indexes) as captured:
            embeddings = self.encoder(x)
        return embeddings, torch.stack([captured[i] for i in indexes], dim=1)


def onnxruntime_available() -> bool:
    """Whether onnxruntime can be imported here."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def wants_onnx(runtime: str, spec: ModelSpec, device: torch.device) -> bool:
    """Whether ``runtime`` means onnxruntime for this model and device (see the module docstring)."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"encoder runtime '{runtime}': use one of {', '.join(RUNTIMES)}")
    if runtime == "torch":
        return False
    if runtime == "onnx":
        if device.type != "cpu":
            raise ConfigError(f"the onnxruntime encoder runs on the CPU, not {device}; use encoder runtime torch")
        if not onnxruntime_available():
            raise ConfigError("onnxruntime is not installed; pip install onnxruntime, or use encoder runtime torch")
        return True
    return spec.encoder == "tiny_vit" and device.type == "cpu" and onnxruntime_available()


def export_encoder(loaded: LoadedModel, path: Path) -> Path:
    """Write ``loaded``'s encoder graph (see the module docstring) to ``path``, atomically."""
    spec = loaded.spec
    graph = EncoderGraph(loaded.sam.image_encoder, spec).eval()
    example = torch.rand(1, 3, spec.image_size, spec.image_size)
    names = ["embeddings", "features"]
    try:
        with atomic_path(path, suffix=".onnx") as tmp, torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings on shape arithmetic, the exporter's deprecation
            torch.onnx.export(graph, (example,), str(tmp), dynamo=False, input_names=["images"], output_names=names,
                              opset_version=OPSET, do_constant_folding=True)
    except OSError as err:
        raise ConfigError(f"{path}: cannot write the ONNX encoder there ({err.strerror or err}); set "
                          "SAMADAPT_CACHE to a writable folder or use encoder runtime torch") from None
    return path


class OnnxEncoder:
    """An onnxruntime session of the encoder graph; ``__call__`` maps ``Bx3xSxS`` float32 to
    ``(BxCxgxg, Bx3xDxgxg)`` float32 numpy arrays."""

    def __init__(self, loaded: LoadedModel, digest: str, threads: int | None = None):
        import onnxruntime

        self.path = cache_dir() / "onnx" / f"encoder-{digest[:16]}.onnx"
        fresh = not self.path.is_file()
        if fresh:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            export_encoder(loaded, self.path)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = max(1, threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = onnxruntime.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        if fresh:
            self.parity = encoder_parity(loaded, self)
            if self.parity["relative_max_abs_diff"] > PARITY_TOLERANCE:
                self.path.unlink(missing_ok=True)
                raise ConfigError(f"{self.path}: the exported encoder differs from torch (relative max |diff| "
                                  f"{self.parity['relative_max_abs_diff']:.1e}); use encoder runtime torch")

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        outputs = [self.session.run(None, {"images": np.ascontiguousarray(image[None], dtype=np.float32)})
                   for image in images]
        return np.concatenate([o[0] for o in outputs]), np.concatenate([o[1] for o in outputs])


def encoder_parity(loaded: LoadedModel, onnx: OnnxEncoder, seed: int = 0) -> dict:
    """onnxruntime vs torch on one random input: ``{"max_abs_diff", "scale", "relative_max_abs_diff"}``
    over the embedding and the features."""
    spec = loaded.spec
    x = torch.rand(1, 3, spec.image_size, spec.image_size, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        ref = [t.numpy() for t in EncoderGraph(loaded.sam.image_encoder, spec).eval()(x)]
    got = onnx(x.numpy())
    diff = max(float(np.abs(a - b).max()) for a, b in zip(got, ref, strict=True))
    scale = max(float(np.abs(r).max()) for r in ref)
    return {"max_abs_diff": diff, "scale": scale, "relative_max_abs_diff": diff / max(scale, 1e-12)}


def use_encoder_runtime(loaded: LoadedModel, runtime: str, device: str | torch.device = "cpu") -> LoadedModel:
    """Attach an onnxruntime encoder to ``loaded`` when ``runtime`` asks for it here (exporting it on first
    use); detach it for ``torch``. ``loaded.encoder_runtime`` keeps what was resolved (``onnx`` or ``torch``),
    so ``auto`` is decided once. Returns ``loaded``."""
    from samadapt.models.embedding_cache import encoder_digest

    loaded.onnx_encoder = None
    onnx = wants_onnx(runtime, loaded.spec, torch.device(device))
    if onnx:
        loaded.onnx_encoder = OnnxEncoder(loaded, encoder_digest(loaded))
    loaded.encoder_runtime = "onnx" if onnx else "torch"
    return loaded
