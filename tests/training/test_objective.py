"""The Objective protocol: the three objectives implement it, and multi-prompt is PHPG with zero rounds."""

from __future__ import annotations

import torch

from samadapt.models.sam import load_sam
from samadapt.promise.objective import AdaptedSlice, PromiseObjective
from samadapt.promise.samples import PromiseSample
from samadapt.prompts.behaviour_mixture import first_mixture
from samadapt.prompts.box_noise import BoxNoise
from samadapt.training.multi_prompt import MultiPromptObjective
from samadapt.training.objective import Objective, RegionObjective
from samadapt.training.phpg import PHPGObjective
from samadapt.training.slice_data import SliceSample


def _masks(n: int = 4) -> torch.Tensor:
    masks = torch.zeros(n, 64, 64, dtype=torch.bool)
    for i in range(n):
        masks[i, 4 + 14 * i : 14 + 14 * i, 5 + 4 * i : 30 + 5 * i] = True
    return masks


def test_every_objective_is_one_and_the_fine_tuning_ones_are_per_region():
    for objective in (MultiPromptObjective(), PHPGObjective(), PromiseObjective()):
        assert isinstance(objective, Objective)
    assert isinstance(MultiPromptObjective(), RegionObjective) and isinstance(PHPGObjective(), RegionObjective)
    assert not isinstance(PromiseObjective(), RegionObjective)


def test_multi_prompt_is_phpg_with_zero_rounds():
    """Tight boxes and no correction, mask-only round or error head: PHPG's per-region losses are
    multi-prompt's (same object choice, same mask loss, one decoder pass)."""
    torch.manual_seed(0)
    sam = load_sam("test_micro").sam
    masks = _masks()
    sample = SliceSample(torch.randn(1, 32, 4, 4, generator=torch.Generator().manual_seed(1)), masks,
                         ["a"] * 4, torch.zeros(4, dtype=torch.bool))
    multi = MultiPromptObjective(max_prompts_per_slice=3, noise=BoxNoise("none"), loss_size=32)
    phpg = PHPGObjective(max_prompts_per_slice=3, first=first_mixture({"box_tight": 1}), correction_rounds=0,
                         mask_only_rounds=0, loss_size=32)
    a, chosen_a, _ = multi.slice_losses(sam, sample, torch.Generator().manual_seed(2))
    b, chosen_b, stats = phpg.slice_losses(sam, sample, torch.Generator().manual_seed(2))
    assert torch.equal(chosen_a, chosen_b) and len(chosen_a) == 3 and stats["rounds"] == 1
    torch.testing.assert_close(a, b)  # the same float32 operations on the same values
    torch.testing.assert_close(multi.slice_loss(sam, sample, torch.Generator().manual_seed(2))[0], a.mean())


def test_promise_objectives_slice_loss_is_its_automatic_or_prompted_loss():
    torch.manual_seed(0)
    sam = load_sam("test_micro").sam
    masks = _masks(2)
    sample = PromiseSample(torch.randn(1, 32, 4, 4, generator=torch.Generator().manual_seed(1)), None,
                           torch.tensor([0, 1]), masks, torch.tensor([1.0, 1.0, 0.0]), masks, (64, 64))
    objective = PromiseObjective(ips_prompts="box")
    prompted, stats = objective.slice_loss(sam, AdaptedSlice(sample), torch.Generator())
    expected, _ = objective.prompted_loss(sam, sample, None, torch.Generator())
    torch.testing.assert_close(prompted, expected)
    assert stats["prompts"] == 2
    points = torch.tensor([[[20.5, 8.5], [3.5, 3.5]], [[22.5, 25.5], [60.5, 60.5]], [[1.5, 1.5], [2.5, 2.5]]])
    labels = torch.tensor([[1, 0]] * 3)
    presence = torch.tensor([2.0, 1.0, -1.0])
    automatic, stats = objective.slice_loss(sam, AdaptedSlice(sample, None, points, labels, presence), None)
    expected, _ = objective.automatic_loss(sam, sample, points, labels, presence, None)
    torch.testing.assert_close(automatic, expected)
    assert "presence_loss" in stats and stats["prompts"] == 2
