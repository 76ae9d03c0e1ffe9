"""Image-encoder throughput (images/s) by model and batch size, against the machine's FLOP/s bound.

Random weights of the registry's architecture (they run as fast as trained ones), ``torch.inference_mode``.
On the CPU: fp32 only (bf16 on CPU is ~10x slower here, see docs/training.md). On a CUDA GPU, variants:
fp32 and bf16 autocast, each with contiguous and channels-last input (the ViT's only convolution is its
patch embedding, so channels-last matters little), eager, plus ``torch.compile`` of the fp32 and the
bf16 channels-last variants. Without a GPU those variants are reported as skipped.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from perf.machine_bound import encoder_flops
from perf.timing import median_seconds, sig
from samadapt.models.registry import REGISTRY
from samadapt.models.sam import build_sam


@dataclass(frozen=True)
class Variant:
    """How the encoder runs: autocast dtype (None: fp32), channels-last input, ``torch.compile``."""

    amp: torch.dtype | None = None
    channels_last: bool = False
    compiled: bool = False

    @property
    def name(self) -> str:
        parts = ["bf16" if self.amp == torch.bfloat16 else "fp32"]
        parts += ["channels_last"] if self.channels_last else []
        parts += ["compiled"] if self.compiled else ["eager"]
        return "+".join(parts)


GPU_VARIANTS = (Variant(), Variant(channels_last=True), Variant(torch.bfloat16), Variant(torch.bfloat16, True),
                Variant(compiled=True), Variant(torch.bfloat16, True, True))


def encoder_images_per_s(name: str, batch_size: int, repeats: int, warmup: int, device: torch.device,
                         variant: Variant = Variant()) -> dict:
    """Images/s of ``name``'s encoder at ``batch_size`` (median of ``repeats`` calls)."""
    spec = REGISTRY[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        encoder = build_sam(spec).image_encoder.to(device).eval()
    x = torch.randn(batch_size, 3, spec.image_size, spec.image_size, generator=torch.Generator().manual_seed(0))
    x = x.to(device)
    if variant.channels_last:
        encoder, x = encoder.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    run_encoder = torch.compile(encoder) if variant.compiled else encoder
    autocast = torch.autocast(device.type, dtype=variant.amp) if variant.amp else contextlib.nullcontext()

    def run() -> None:
        with torch.inference_mode(), autocast:
            run_encoder(x)

    median, times = median_seconds(run, repeats, warmup + (1 if variant.compiled else 0), device)
    return {"model": name, "batch_size": batch_size, "variant": variant.name, "device": str(device),
            "repeats": repeats, "seconds_per_batch": [sig(t) for t in times],
            "images_per_s": sig(batch_size / median)}


def encoder_section(quick: bool, cpu_flops_per_s: float, gpu_flops: dict[str, float] | None) -> dict:
    """Throughput sweeps (CPU fp32; GPU variants when a GPU is there), each with its FLOP/s bound.

    ``gpu_flops``: measured matmul FLOP/s on the GPU by dtype name (``fp32``, ``bf16``), or None.
    """
    cpu = torch.device("cpu")
    plan = {"tiny": ((1, 2, 4, 8), 2 if quick else 5, 1), "vit_b": ((1,) if quick else (1, 2), 1, 0)}
    flops = {name: encoder_flops(name) for name in plan}
    rows = []
    for name, (batches, repeats, warmup) in plan.items():
        for batch in batches:
            row = encoder_images_per_s(name, batch, repeats, warmup, cpu)
            row["bound_images_per_s"] = sig(cpu_flops_per_s / flops[name])
            row["fraction_of_bound"] = round(row["images_per_s"] / row["bound_images_per_s"], 3)
            rows.append(row)
    section = {"gflops_per_image": {k: sig(v / 1e9) for k, v in flops.items()}, "cpu_fp32": rows}
    if gpu_flops is None:
        section["gpu"] = {"skipped": "no CUDA GPU here"}
        return section
    gpu = torch.device("cuda")
    gpu_rows = []
    for name in plan:
        for variant in GPU_VARIANTS:
            for batch in (1, 8):
                row = encoder_images_per_s(name, batch, 3 if quick else 10, 2, gpu, variant)
                rate = gpu_flops["bf16" if variant.amp else "fp32"]
                row["bound_images_per_s"] = sig(rate / flops[name])
                row["fraction_of_bound"] = round(row["images_per_s"] / row["bound_images_per_s"], 3)
                gpu_rows.append(row)
    section["gpu"] = {"device": torch.cuda.get_device_name(gpu), "rows": gpu_rows}
    return section
