"""LoRA on the image encoder's attention: low-rank updates of each block's ``qkv`` projection.

``add_lora(encoder, rank, alpha)`` wraps every attention block's ``attn.qkv`` (a ``Linear``; SAM's ViT:
``blocks[i].attn.qkv``, TinyViT: ``layers[s].blocks[i].attn.qkv``) in a
:class:`LoRALinear`: ``y = W x + b + (alpha / rank) * B (A x)`` with ``A`` (``rank x C``) random and ``B``
(``3C x rank``) zero, so the wrapped encoder starts exactly as the original. Only ``A`` and ``B`` train.
``merge_lora`` folds ``B A`` into ``W`` and puts plain ``Linear`` layers back, so the saved model is an
ordinary SAM state dict that ``segment_anything`` loads.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable rank-``rank`` update scaled by ``alpha / rank``."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.base = base
        self.scale = alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        base.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.T @ self.lora_b.T) * self.scale

    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` computing the same function."""
        out = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None)
        out = out.to(self.base.weight.device)
        with torch.no_grad():
            out.weight.copy_(self.base.weight + self.scale * self.lora_b @ self.lora_a)
            if self.base.bias is not None:
                out.bias.copy_(self.base.bias)
        return out


def _attention_modules(encoder: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every attention module with a ``qkv`` projection, in module order."""
    return [(name, module) for name, module in encoder.named_modules()
            if name.endswith("attn") and isinstance(getattr(module, "qkv", None), (nn.Linear, LoRALinear))]


def add_lora(encoder: nn.Module, rank: int, alpha: float) -> dict[str, nn.Parameter]:
    """Wrap the ``qkv`` projection of every attention block of the image encoder (ViT or TinyViT).

    Returns the LoRA parameters by name (``<attention path>.qkv.lora_a`` / ``lora_b``, e.g.
    ``blocks.<i>.attn.qkv.lora_a`` for SAM's ViT).
    """
    params = {}
    for name, attn in _attention_modules(encoder):
        if not isinstance(attn.qkv, LoRALinear):
            attn.qkv = LoRALinear(attn.qkv, rank, alpha)
        params[f"{name}.qkv.lora_a"] = attn.qkv.lora_a
        params[f"{name}.qkv.lora_b"] = attn.qkv.lora_b
    return params


def merge_lora(encoder: nn.Module) -> None:
    """Fold every :class:`LoRALinear` of ``encoder`` back into a plain ``Linear`` (in place)."""
    for _, attn in _attention_modules(encoder):
        if isinstance(attn.qkv, LoRALinear):
            attn.qkv = attn.qkv.merged()
