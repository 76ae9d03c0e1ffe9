"""The multi-prompt objective on a real (micro) SAM: one decoder pass for all boxes of a slice."""

from __future__ import annotations

import pytest
import torch

from samadapt.models.sam import load_sam
from samadapt.prompts.box_noise import BoxNoise
from samadapt.training.multi_prompt import MultiPromptObjective
from samadapt.training.slice_data import SliceSample


@pytest.fixture(scope="module")
def sam():
    torch.manual_seed(0)
    return load_sam("test_micro").sam


def _sample(n: int = 5) -> SliceSample:
    masks = torch.zeros(n, 64, 64, dtype=torch.bool)
    for i in range(n):
        masks[i, 4 + 10 * i : 12 + 10 * i, 5 : 20 + 5 * i] = True
    embedding = torch.randn(1, 32, 4, 4, generator=torch.Generator().manual_seed(1))
    return SliceSample(embedding, masks, [f"c{i}" for i in range(n)], torch.tensor([i % 2 == 1 for i in range(n)]))


def test_all_objects_go_through_one_decoder_call(sam, monkeypatch):
    calls = []
    original = sam.mask_decoder.predict_masks  # every decoder pass runs it (forward too)

    def counting(*args, **kwargs):
        out = original(*args, **kwargs)
        calls.append(out[0].shape[0])
        return out

    monkeypatch.setattr(sam.mask_decoder, "predict_masks", counting)
    loss, stats = MultiPromptObjective().slice_loss(sam, _sample(5), torch.Generator().manual_seed(0))
    assert calls == [5] and stats["prompts"] == 5.0
    loss.backward()
    assert sam.mask_decoder.output_upscaling[0].weight.grad is not None


def test_single_prompting_draws_one_object_at_random():
    objective = MultiPromptObjective(prompting="single")
    gen = torch.Generator().manual_seed(0)
    picks = {int(objective.choose_objects(6, gen)) for _ in range(60)}
    assert picks == set(range(6))


def test_prompts_beyond_the_cap_are_a_random_subset():
    objective = MultiPromptObjective(max_prompts_per_slice=3)
    gen = torch.Generator().manual_seed(0)
    first, second = objective.choose_objects(8, gen), objective.choose_objects(8, gen)
    assert len(first) == 3 and len(set(first.tolist())) == 3 and not torch.equal(first, second)
    assert torch.equal(MultiPromptObjective().choose_objects(8, gen), torch.arange(8))


def test_max_reduction_backpropagates_the_worst_prompt(sam):
    sample = _sample(4)
    mean = MultiPromptObjective(noise=BoxNoise("none"), prompt_reduction="mean")
    worst = MultiPromptObjective(noise=BoxNoise("none"), prompt_reduction="max")
    loss_mean, _ = mean.slice_loss(sam, sample, torch.Generator().manual_seed(0))
    loss_max, _ = worst.slice_loss(sam, sample, torch.Generator().manual_seed(0))
    assert loss_max > loss_mean
    # the worst prompt's own loss, computed alone, equals the max
    singles = [mean.slice_loss(sam, SliceSample(sample.embedding, sample.masks[i : i + 1], ["c"],
                                                sample.is_lesion[i : i + 1]), torch.Generator())[0]
               for i in range(4)]
    torch.testing.assert_close(loss_max, torch.stack(singles).max(), rtol=1e-4, atol=1e-5)


def test_focal_variant_changes_the_pixel_term(sam):
    sample = _sample(3)
    bce = MultiPromptObjective(noise=BoxNoise("none"))
    focal = MultiPromptObjective(noise=BoxNoise("none"), loss="dice+focal")
    a, _ = bce.slice_loss(sam, sample, torch.Generator())
    b, _ = focal.slice_loss(sam, sample, torch.Generator())
    assert b < a  # focal down-weights easy pixels: smaller than BCE on the same logits
