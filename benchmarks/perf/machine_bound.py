"""Physical bounds: the machine's measured matmul FLOP/s and the FLOPs a model needs.

FLOPs are counted by :class:`torch.utils.flop_counter.FlopCounterMode` (2 per multiply-add, matmuls and
convolutions only) on the ``meta`` device, so counting ViT-B costs no compute. The machine's rate is the
best of a few large square matmuls: what dense kernels reach here, hence an upper bound on images/s for a
model whose FLOPs are nearly all matmuls (the ViT encoder); elementwise work, softmax and memory traffic
come on top.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from samadapt.models.decoder import SamDecoder
from samadapt.models.registry import REGISTRY
from samadapt.models.sam import build_sam


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_flops_per_s(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 2048,
                       repeats: int = 5) -> float:
    """Best FLOP/s of ``repeats`` ``n x n`` matmuls (``2 n^3`` FLOPs each) after one warm-up."""
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=generator)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=generator)
    a @ b
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def count_flops(run: Callable[[], object]) -> int:
    """FLOPs of ``run()`` as :class:`FlopCounterMode` counts them."""
    with FlopCounterMode(display=False) as counter:
        run()
    return int(counter.get_total_flops())


def encoder_flops(name: str) -> int:
    """FLOPs of one image through the image encoder of registry model ``name`` (at its input size)."""
    spec = REGISTRY[name]
    with torch.device("meta"):
        sam = build_sam(spec)
    x = torch.zeros(1, 3, spec.image_size, spec.image_size, device="meta")
    with torch.no_grad():
        return count_flops(lambda: sam.image_encoder(x))


def decoder_flops(name: str, n_prompts: int) -> int:
    """FLOPs of one prompt encoder + mask decoder pass for ``n_prompts`` boxes on one embedding."""
    spec = REGISTRY[name]
    with torch.device("meta"):
        sam = build_sam(spec)
    g = spec.embedding_size
    embedding = torch.zeros(1, spec.prompt_embed_dim, g, g, device="meta")
    boxes = torch.zeros(n_prompts, 4, device="meta")
    return count_flops(lambda: SamDecoder(sam)(embedding, boxes=boxes))  # no no_grad: the flop counter's hooks need it
