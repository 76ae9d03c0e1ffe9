"""The torch Decoder: plain SAM, SAM with an IPS token shift (fixed or computed), mixed region batches."""

from __future__ import annotations

import torch

from samadapt.models.decoder import SamDecoder
from samadapt.prompts.region_prompts import RegionPrompts

BOXES = torch.tensor([[4.0, 5.0, 30.0, 40.0], [10.0, 10.0, 50.0, 20.0]])


def _shift() -> torch.Tensor:
    return torch.randn(1, 4, 32, generator=torch.Generator().manual_seed(3))


@torch.no_grad()
def test_a_computed_shift_is_the_fixed_shift_it_computes(sam, embedding):
    seen = []
    computed = SamDecoder(sam, lambda embedding: seen.append(embedding) or _shift())
    low, iou = computed(embedding, boxes=BOXES, multimask=True)
    fixed_low, fixed_iou = SamDecoder(sam, _shift())(embedding, boxes=BOXES, multimask=True)
    assert torch.equal(low, fixed_low) and torch.equal(iou, fixed_iou)
    assert len(seen) == 1 and torch.equal(seen[0], embedding)  # computed from the call's embedding
    plain, _ = SamDecoder(sam, lambda embedding: None)(embedding, boxes=BOXES, multimask=True)
    assert torch.equal(plain, SamDecoder(sam)(embedding, boxes=BOXES, multimask=True)[0])
    assert (plain - low).abs().max() > 1e-3


@torch.no_grad()
def test_all_outputs_carry_the_shift_too(sam, embedding):
    prompts = RegionPrompts.from_boxes(BOXES)
    decoder = SamDecoder(sam, _shift())
    low, iou = decoder.all_outputs(embedding, prompts)
    single, single_iou = decoder(embedding, boxes=BOXES)
    multi, multi_iou = decoder(embedding, boxes=BOXES, multimask=True)
    torch.testing.assert_close(low[:, :1], single)
    torch.testing.assert_close(low[:, 1:], multi)
    torch.testing.assert_close(iou, torch.cat([single_iou, multi_iou], dim=1))
    unshifted, _ = SamDecoder(sam).all_outputs(embedding, prompts)
    assert (unshifted - low).abs().max() > 1e-3


@torch.no_grad()
def test_an_array_embedding_is_decoded_as_float32_on_sams_device(sam, embedding):
    half = embedding.to(torch.float16)
    from_array, _ = SamDecoder(sam)(half.numpy(), boxes=BOXES)
    from_tensor, _ = SamDecoder(sam)(half.float(), boxes=BOXES)
    assert torch.equal(from_array, from_tensor)

