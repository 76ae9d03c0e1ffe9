"""Prompt encoder + mask decoder latency per prompt batch (1..64 boxes on one embedding), torch and ONNX.

Inference (``torch.inference_mode``), fp32, the slice's embedding already computed. Per model and prompt
count N: median latency, latency per prompt, the FLOP bound (decoder FLOPs / machine FLOP/s), and a
least-squares fit ``latency = fixed + per_prompt x N``. The fit says how much batching prompts can save:
SAM's decoder repeats the image embedding for every prompt and runs its two-way transformer on each copy,
so its FLOPs grow linearly in N; batching amortises only the fixed part, and ``(fixed + per_prompt) /
per_prompt`` caps the objects/s gain of multi-prompt decoding over one prompt per call.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from perf.machine_bound import decoder_flops
from perf.timing import median_seconds, sig
from samadapt.models.decoder import SamDecoder
from samadapt.models.registry import REGISTRY
from samadapt.models.sam import LoadedModel, build_sam, load_sam


def _boxes(n: int, image_size: int) -> torch.Tensor:
    corners = torch.rand(n, 2, 2, generator=torch.Generator().manual_seed(n)) * image_size
    return torch.cat([corners.min(1).values, corners.max(1).values], 1)


def linear_fit(counts: list[int], seconds: list[float]) -> dict:
    """``seconds = fixed + per_prompt * count`` by least squares, and the batching gain it allows:
    ``(fixed + per_prompt) / per_prompt``, with a (noise-made) negative ``fixed`` counted as 0."""
    per_prompt, fixed = np.polyfit(np.asarray(counts, float), np.asarray(seconds, float), 1)
    gain = (max(fixed, 0.0) + per_prompt) / per_prompt if per_prompt > 0 else float("inf")
    return {"fixed_ms": sig(1000 * fixed), "per_prompt_ms": sig(1000 * per_prompt),
            "objects_per_s_gain_limit": sig(gain, 3)}


def _onnx_latency(loaded: LoadedModel, counts: tuple[int, ...], repeats: int) -> dict:
    """Median seconds per call of the exported decoder in onnxruntime, by prompt count."""
    from samadapt.export.onnx_decoder import export_decoder, onnx_prompt_arrays, onnx_session

    spec = loaded.spec
    with tempfile.TemporaryDirectory(prefix="perf_onnx_") as tmp:
        path = Path(tmp) / "decoder.onnx"
        export_decoder(loaded, path)
        session = onnx_session(path)
        g, low = spec.embedding_size, spec.low_res_mask_size
        embedding = np.random.default_rng(0).standard_normal((1, spec.prompt_embed_dim, g, g)).astype(np.float32)
        out = {}
        for n in counts:
            coords, labels = onnx_prompt_arrays(boxes=_boxes(n, spec.image_size))
            feeds = {"image_embeddings": embedding, "point_coords": coords, "point_labels": labels,
                     "mask_input": np.zeros((1, 1, low, low), np.float32), "has_mask_input": np.zeros(1, np.float32)}
            out[n] = median_seconds(lambda feeds=feeds: session.run(None, feeds), repeats)[0]
    return out


def torch_latencies(loaded: LoadedModel, counts: tuple[int, ...], repeats: int, cpu_flops_per_s: float
                    ) -> tuple[list[dict], list[float]]:
    """(rows, median seconds) of :class:`~samadapt.models.decoder.SamDecoder` for each prompt count."""
    spec = loaded.spec
    g = spec.embedding_size
    embedding = torch.randn(1, spec.prompt_embed_dim, g, g, generator=torch.Generator().manual_seed(0))
    decoder = SamDecoder(loaded.sam)
    rows, medians = [], []
    for n in counts:
        boxes = _boxes(n, spec.image_size)

        def run(boxes: torch.Tensor = boxes) -> None:
            with torch.inference_mode():
                decoder(embedding, boxes=boxes)

        median = median_seconds(run, repeats, warmup=2)[0]
        medians.append(median)
        flops = decoder_flops(spec.name, n)
        rows.append({"prompts": n, "latency_ms": sig(1000 * median), "ms_per_prompt": sig(1000 * median / n),
                     "gflops": sig(flops / 1e9), "bound_ms": sig(1000 * flops / cpu_flops_per_s),
                     "fraction_of_bound": round(flops / cpu_flops_per_s / median, 3)})
    return rows, medians


def decoder_section(quick: bool, cpu_flops_per_s: float) -> dict:
    """Latency sweeps for tiny (torch and onnxruntime) and, unless ``quick``, random-weight vit_b (torch)."""
    plan = {"tiny": ((1, 2, 4, 8, 16, 32, 64), 5 if quick else 15)}
    if not quick:
        plan["vit_b"] = ((1, 2, 4, 8), 3)
    section = {}
    for name, (counts, repeats) in plan.items():
        if name == "tiny":
            loaded = load_sam("tiny")
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                loaded = LoadedModel(build_sam(REGISTRY[name]), REGISTRY[name], None, {})
        rows, medians = torch_latencies(loaded, counts, repeats, cpu_flops_per_s)
        entry = {"torch_fp32": rows, "fit": linear_fit(list(counts), medians)}
        if name == "tiny":
            try:
                onnx = _onnx_latency(loaded, counts, repeats)
            except Exception as err:  # onnxruntime missing or the export failing: report, keep the rest
                entry["onnxruntime"] = {"skipped": f"{type(err).__name__}: {err}"}
            else:
                entry["onnxruntime"] = [{"prompts": n, "latency_ms": sig(1000 * s),
                                         "speedup_vs_torch": round(medians[i] / s, 2)}
                                        for i, (n, s) in enumerate(onnx.items())]
        section[name] = entry
    return section
