"""Mixed region prompts decode in one pass, and match SAM's own prompt encoding where SAM can encode them."""

from __future__ import annotations

import pytest
import torch

from samadapt.models.decoder import SamDecoder
from samadapt.models.region_decode import encode_region_prompts, pick_outputs
from samadapt.prompts.region_prompts import RegionPrompts

BOXES = torch.tensor([[4.0, 5.0, 30.0, 40.0], [10.0, 10.0, 50.0, 20.0], [0.0, 30.0, 63.0, 63.0]])
POINTS = torch.tensor([[[10.5, 12.5], [20.5, 22.5]], [[30.5, 15.5], [0.0, 0.0]], [[40.5, 50.5], [41.5, 52.5]]])
LABELS = torch.tensor([[1, 0], [1, -1], [1, 1]])


@torch.no_grad()
def test_boxes_alone_and_clicks_alone_are_exactly_sams_own_encoding(sam, embedding):
    low, iou = SamDecoder(sam).all_outputs(embedding, RegionPrompts.from_boxes(BOXES))
    ref_low, ref_iou = SamDecoder(sam)(embedding, boxes=BOXES)
    torch.testing.assert_close(low[:, :1], ref_low)
    torch.testing.assert_close(iou[:, :1], ref_iou)
    prompts = RegionPrompts.from_points(POINTS, LABELS)
    low, iou = SamDecoder(sam).all_outputs(embedding, prompts)
    ref_low, ref_iou = SamDecoder(sam)(embedding, points=(POINTS, LABELS), multimask=True)
    torch.testing.assert_close(low[:, 1:], ref_low)
    both = RegionPrompts(POINTS, LABELS, BOXES, torch.ones(3, dtype=torch.bool))
    low, _ = SamDecoder(sam).all_outputs(embedding, both, torch.randn(3, 1, 16, 16, generator=torch.Generator()))
    assert low.shape == (3, 4, 16, 16)


@torch.no_grad()
def test_a_mixed_batch_is_one_decoder_pass_with_a_box_only_where_given(sam, monkeypatch, embedding):
    prompts = RegionPrompts(POINTS, LABELS, BOXES, torch.tensor([True, False, True]))
    sparse, dense = encode_region_prompts(sam, prompts)
    assert sparse.shape == (3, 4, 32) and dense.shape[0] == 1
    not_a_point = sam.prompt_encoder.not_a_point_embed.weight[0]
    torch.testing.assert_close(sparse[1, 2], not_a_point)  # region 1 has no box: "not a point" tokens
    torch.testing.assert_close(sparse[1, 1], not_a_point)  # its padding click too
    assert not torch.allclose(sparse[0, 2], not_a_point)
    calls = []
    original = sam.mask_decoder.predict_masks
    monkeypatch.setattr(sam.mask_decoder, "predict_masks", lambda **kw: calls.append(1) or original(**kw))
    low, iou = SamDecoder(sam).all_outputs(embedding, prompts)
    assert calls == [1] and low.shape == (3, 4, 16, 16) and iou.shape == (3, 4)


def test_pick_outputs_takes_sams_choice_per_region():
    low = torch.arange(3 * 4, dtype=torch.float32).reshape(3, 4, 1, 1).expand(3, 4, 2, 2)
    iou = torch.tensor([[0.9, 0.1, 0.5, 0.2], [0.1, 0.2, 0.3, 0.9], [0.5, 0.6, 0.7, 0.1]])
    logits, chosen_iou, index = pick_outputs(low, iou, torch.tensor([False, True, True]))
    assert index.tolist() == [0, 3, 2] and chosen_iou.tolist() == pytest.approx([0.9, 0.9, 0.7])
    assert logits[:, 0, 0].tolist() == [0.0, 7.0, 10.0]
