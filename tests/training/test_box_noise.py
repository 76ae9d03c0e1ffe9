"""Box perturbation for fine-tuning: outward MedSAM shifts, SAM noise, per-type ranges capped by size."""

from __future__ import annotations

import pytest
import torch

from samadapt.errors import ConfigError
from samadapt.prompts.box_noise import BoxNoise

BOXES = torch.tensor([[20.0, 30.0, 120.0, 140.0], [60.0, 60.0, 68.0, 66.0]])  # an organ, a small lesion
LESION = torch.tensor([False, True])


def test_medsam_moves_every_side_outward_within_its_limit():
    noise = BoxNoise("medsam", organ_shift_px=10.0, lesion_shift_px=4.0, max_fraction=0.25)
    gen = torch.Generator().manual_seed(0)
    moved = torch.stack([noise(BOXES, LESION, gen, 256) for _ in range(200)])
    outward = (moved - BOXES) * torch.tensor([-1.0, -1.0, 1.0, 1.0])
    assert (outward >= 0).all()
    assert outward[:, 0].max() <= 10.0 and outward[:, 0].max() > 8.0  # organ: its full 10 px range is used
    # lesion side is 6 px: the cap is 0.25 x 6 = 1.5 px, tighter than its 4 px range
    assert outward[:, 1].max() <= 1.5 + 1e-6 and outward[:, 1].max() > 1.2


def test_sam_noise_goes_both_ways_and_respects_the_caps():
    noise = BoxNoise("sam", organ_shift_px=5.0, lesion_shift_px=2.0, max_fraction=0.25, sam_std=0.1)
    gen = torch.Generator().manual_seed(1)
    moved = torch.stack([noise(BOXES, LESION, gen, 256) for _ in range(200)])
    delta = moved - BOXES
    assert delta[:, 0].min() < -2 and delta[:, 0].max() > 2  # organ boxes shrink and grow
    assert delta[:, 0].abs().max() <= 5.0 + 1e-5
    assert delta[:, 1].abs().max() <= 1.5 + 1e-5
    assert (moved[..., 2] > moved[..., 0]).all() and (moved[..., 3] > moved[..., 1]).all()


def test_mixed_is_the_default_and_draws_both_loose_and_cutting_boxes():
    """About half the organ boxes move outward only (MedSAM) and the rest both ways (SAM), within the cap."""
    noise = BoxNoise(organ_shift_px=5.0)
    assert noise.style == "mixed"
    gen = torch.Generator().manual_seed(3)
    moved = torch.stack([noise(BOXES, LESION, gen, 256) for _ in range(400)])
    outward = (moved[:, 0] - BOXES[0]) * torch.tensor([-1.0, -1.0, 1.0, 1.0])
    loose = (outward >= 0).all(dim=1).float().mean()
    assert 0.4 < loose < 0.75  # 1/2 outward by choice, plus the SAM draws that happen to move all sides out
    assert (outward < -2).any(dim=1).float().mean() > 0.2  # boxes that cut the organ by more than 2 px
    assert outward.abs().max() <= 5.0 + 1e-5


@pytest.mark.parametrize("style", ["mixed", "medsam", "sam"])
def test_boxes_stay_inside_the_frame(style):
    edge = torch.tensor([[0.0, 0.0, 63.0, 63.0]])
    moved = BoxNoise(style, organ_shift_px=20.0)(edge, torch.tensor([False]), torch.Generator().manual_seed(2), 64)
    assert moved.min() >= 0 and moved.max() <= 63


def test_none_keeps_tight_boxes_and_unknown_styles_are_refused():
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(BoxNoise("none")(BOXES, LESION, gen, 256), BOXES)
    with pytest.raises(ConfigError, match="box_noise setting style='wobbly': use one of mixed, medsam"):
        BoxNoise("wobbly")
