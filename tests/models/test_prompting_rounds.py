"""The one prompting-rounds loop on the tiny model: zero rounds is multi-prompt's decode, later rounds feed the
previous logits back, and the caller's strategies (clicks, output choice, early stop) are the ones used."""

from __future__ import annotations

import pytest
import torch

from samadapt.models.decoder import SamDecoder, upscale_logits
from samadapt.models.preprocess import to_model_input
from samadapt.models.prompting_rounds import decode_all_outputs, prompting_rounds, round_schedule
from samadapt.models.sam import load_sam
from samadapt.prompts.boxes import boxes_from_masks
from samadapt.prompts.corrections import LargestErrorClick
from samadapt.prompts.region_prompts import RegionPrompts

# The same float32 operations on the same inputs, only batched or sliced differently: agreement to float32
# rounding of O(10) logits, far below any difference a changed prompt or mask prompt makes (>= 1e-2).
TOL = {"rtol": 1e-5, "atol": 1e-4}


@pytest.fixture(scope="module")
def scene():
    """The tiny model, its embedding of a 256 px image with three objects (a disc, a rectangle, an ellipse),
    and their ``3x256x256`` masks."""
    loaded = load_sam("tiny")
    size = loaded.spec.image_size
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    masks = torch.stack([(xx - 80) ** 2 + (yy - 90) ** 2 <= 30**2,
                         (xx >= 140) & (xx < 200) & (yy >= 120) & (yy < 210),
                         (xx - 60) ** 2 / 4 + (yy - 190) ** 2 <= 15**2])
    image = (masks.float() * torch.tensor([200.0, 140.0, 90.0])[:, None, None]).sum(0) + 30
    rgb = image.byte()[..., None].expand(size, size, 3).numpy()
    with torch.no_grad():
        embedding = loaded.sam.image_encoder(to_model_input(rgb[None], loaded.spec))
    return loaded.sam.eval(), embedding, masks


@torch.no_grad()
def test_zero_rounds_is_multi_prompts_single_decode(scene):
    sam, embedding, masks = scene
    boxes = boxes_from_masks(masks)
    rounds = []
    last = prompting_rounds(sam, embedding, RegionPrompts.from_boxes(boxes), on_round=rounds.append)
    assert len(rounds) == 1 and last is rounds[0] and last.kind == "first" and last.last
    low_res, iou = SamDecoder(sam)(embedding, boxes=boxes)  # SAM's own batched-box call, single-mask output
    torch.testing.assert_close(last.chosen, low_res[:, 0], **TOL)
    torch.testing.assert_close(last.chosen_iou, iou[:, 0], **TOL)
    torch.testing.assert_close(last.logits, upscale_logits(low_res[:, 0], 256), **TOL)
    # a single click is SAM's ambiguous case: the best of the three multimask outputs by predicted IoU
    centres = torch.tensor([[80.5, 90.5], [170.5, 165.5], [60.5, 190.5]])
    clicked = prompting_rounds(sam, embedding, RegionPrompts.from_points(centres[:, None], torch.ones(3, 1)))
    multi, multi_iou = SamDecoder(sam)(embedding, points=(centres[:, None], torch.ones(3, 1, dtype=torch.long)),
                              multimask=True)
    best = multi_iou.argmax(dim=1)
    assert clicked.ambiguous.all()
    torch.testing.assert_close(clicked.chosen, multi[torch.arange(3), best], **TOL)


@torch.no_grad()
def test_each_round_feeds_back_the_logits_it_chose_before(scene):
    sam, embedding, masks = scene
    user = LargestErrorClick()
    rounds = []
    prompting_rounds(sam, embedding, RegionPrompts.from_boxes(boxes_from_masks(masks)), ["click", "mask", "click"],
                     lambda r: user(r.logits > 0, masks, torch.Generator()), on_round=rounds.append)
    assert [r.kind for r in rounds] == ["first", "click", "mask", "click"]
    assert [r.index for r in rounds] == [0, 1, 2, 3] and [r.last for r in rounds] == [False, False, False, True]
    assert rounds[1].prompts.clicks.tolist() == [1, 1, 1]  # a click round adds one click per region
    assert torch.equal(rounds[2].prompts.points, rounds[1].prompts.points)  # a mask round adds none
    assert rounds[3].prompts.clicks.tolist() == [2, 2, 2]
    for before, now in zip(rounds[:-1], rounds[1:], strict=True):
        fed_back, _ = decode_all_outputs(sam, embedding, now.prompts, before.chosen[:, None])
        without, _ = decode_all_outputs(sam, embedding, now.prompts, None)
        torch.testing.assert_close(now.low_res, fed_back, **TOL)
        assert (now.low_res - without).abs().max() > 1e-2  # the mask prompt is not ignored
    # only the first round may be ambiguous; boxes never are
    assert not any(bool(r.ambiguous.any()) for r in rounds)


@torch.no_grad()
def test_the_callers_strategies_are_honoured(scene):
    sam, embedding, masks = scene
    seen = []

    def clicks(previous):
        seen.append(previous.index)
        return torch.tensor([[10.5, 20.5], [30.5, 40.5], [50.5, 60.5]]), torch.tensor([0, 1, 0])

    def third_output(low_res, iou_pred, ambiguous):
        rows = torch.arange(low_res.shape[0])
        return low_res[:, 2], iou_pred[:, 2], torch.full_like(rows, 2)

    rounds = []

    def stop_after_three(round_) -> bool:
        rounds.append(round_)
        return round_.index == 2

    last = prompting_rounds(sam, embedding, RegionPrompts.from_boxes(boxes_from_masks(masks)), ["click"] * 5,
                            clicks, pick=third_output, on_round=stop_after_three)
    assert seen == [0, 1] and len(rounds) == 3 and last is rounds[-1] and not last.last  # stopped early
    assert last.prompts.points[:, -1].tolist() == [[10.5, 20.5], [30.5, 40.5], [50.5, 60.5]]
    assert last.prompts.labels.tolist() == [[0, 0], [1, 1], [0, 0]]
    for r in rounds:
        torch.testing.assert_close(r.chosen, r.low_res[:, 2])
    with pytest.raises(ValueError, match="clicks strategy"):
        prompting_rounds(sam, embedding, RegionPrompts.from_boxes(boxes_from_masks(masks)), ["click"])
    with pytest.raises(ValueError, match="round kinds"):
        prompting_rounds(sam, embedding, RegionPrompts.from_boxes(boxes_from_masks(masks)), ["box"])


def test_sams_schedule_places_one_mask_round_at_random():
    kinds = [tuple(round_schedule(8, 2, torch.Generator().manual_seed(s))) for s in range(12)]
    assert all(k.count("click") == 8 and k.count("mask") == 2 and k[-1] == "mask" for k in kinds)
    assert len({k.index("mask") for k in kinds}) >= 3
    assert round_schedule(3, 0, torch.Generator()) == ["click"] * 3
