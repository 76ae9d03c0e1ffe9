"""LoRA adapters on SAM's image encoder: identity at start, trainable alone, merged into plain weights."""

from __future__ import annotations

import torch

from samadapt.models.lora import LoRALinear, add_lora, merge_lora
from samadapt.models.registry import REGISTRY
from samadapt.models.sam import build_sam


def _encoder():
    torch.manual_seed(0)
    return build_sam(REGISTRY["test_micro"]).image_encoder


def test_adapters_start_as_the_identity_and_only_they_train():
    encoder = _encoder()
    x = torch.randn(1, 3, 64, 64)
    before = encoder(x)
    params = add_lora(encoder, rank=2, alpha=4.0)
    assert len(params) == 2 * len(encoder.blocks)
    torch.testing.assert_close(encoder(x), before)
    encoder.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    encoder(x).sum().backward()
    assert all(p.grad is not None for p in params.values())
    assert all(p.grad is None for n, p in encoder.named_parameters() if "lora" not in n)


def test_merging_keeps_the_function_and_the_plain_state_dict():
    encoder = _encoder()
    keys = set(encoder.state_dict())
    add_lora(encoder, rank=3, alpha=6.0)
    with torch.no_grad():
        for block in encoder.blocks:
            block.attn.qkv.lora_b.normal_()
    x = torch.randn(2, 3, 64, 64)
    adapted = encoder(x)
    merge_lora(encoder)
    assert not any(isinstance(m, LoRALinear) for m in encoder.modules())
    assert set(encoder.state_dict()) == keys
    torch.testing.assert_close(encoder(x), adapted, rtol=1e-4, atol=1e-4)
