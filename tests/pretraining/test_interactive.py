"""Decoding many prompts on one embedding, and SAM's interactive training recipe, on the micro test model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from samadapt.models.decoder import SamDecoder, upscale_logits
from samadapt.models.preprocess import to_model_input
from samadapt.models.registry import REGISTRY
from samadapt.models.sam import build_sam
from samadapt.pretraining.interactive import InteractiveRecipe, interactive_loss

SPEC = REGISTRY["test_micro"]
S = SPEC.image_size  # 64
LOW = SPEC.low_res_mask_size  # 16



def _model(seed: int = 0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_sam(SPEC).train()


def _scene() -> tuple[np.ndarray, torch.Tensor]:
    """A fixed 64x64 image: a bright disc and a grey rectangle on a dark background, and their masks."""
    yy, xx = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
    disc = (xx - 20) ** 2 + (yy - 22) ** 2 <= 10**2
    rect = (xx >= 36) & (xx < 56) & (yy >= 30) & (yy < 52)
    image = np.full((S, S, 3), 60, dtype=np.uint8)
    image[disc.numpy()] = 200
    image[rect.numpy()] = 130
    return image, torch.stack([disc, rect])


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _params(sam, prefix: str) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in sam.named_parameters() if n.startswith(prefix)]


@torch.no_grad()
def test_decode_shapes_for_each_prompt_kind():
    sam = _model().eval()
    image, masks = _scene()
    embedding = sam.image_encoder(to_model_input(image[None], SPEC))
    assert embedding.shape == (1, SPEC.prompt_embed_dim, SPEC.embedding_size, SPEC.embedding_size)
    boxes = torch.tensor([[10.0, 12.0, 30.0, 32.0], [36.0, 30.0, 55.0, 51.0], [0.0, 0.0, 63.0, 63.0]])
    low, iou = SamDecoder(sam)(embedding, boxes=boxes)
    assert low.shape == (3, 1, LOW, LOW) and iou.shape == (3, 1)
    low3, iou3 = SamDecoder(sam)(embedding, boxes=boxes, multimask=True)
    assert low3.shape == (3, 3, LOW, LOW) and iou3.shape == (3, 3)
    points = torch.tensor([[[20.5, 22.5], [0.0, 0.0]], [[45.5, 40.5], [20.5, 22.5]]])  # Nx2x2, XY
    labels = torch.tensor([[1, -1], [1, 0]])
    low_p, iou_p = SamDecoder(sam)(embedding, points=(points, labels))
    assert low_p.shape == (2, 1, LOW, LOW) and iou_p.shape == (2, 1)
    low_p3, _ = SamDecoder(sam)(embedding, points=(points, labels), multimask=True)
    assert low_p3.shape == (2, 3, LOW, LOW)
    low_m, iou_m = SamDecoder(sam)(embedding, mask_logits=low_p[:, :1])
    assert low_m.shape == (2, 1, LOW, LOW) and iou_m.shape == (2, 1)
    low_all, _ = SamDecoder(sam)(embedding, points=(points, labels), boxes=boxes[:2], mask_logits=low_p)
    assert low_all.shape == (2, 1, LOW, LOW)
    # prompts matter: different boxes give different masks
    assert not torch.allclose(low[0], low[1])
    up = upscale_logits(low3, S)
    assert up.shape == (3, 3, S, S)
    expected = F.interpolate(low3, (S, S), mode="bilinear", align_corners=False)
    assert torch.allclose(up, expected)
    assert masks.shape == (2, S, S)


def test_schedule_of_sams_recipe():
    recipe = InteractiveRecipe()
    positions = set()
    for seed in range(12):
        rounds = recipe.schedule(torch.Generator().manual_seed(seed))
        assert len(rounds) == 10
        assert rounds.count("click") == 8 and rounds.count("mask") == 2
        assert rounds[-1] == "mask"
        positions.add(rounds.index("mask"))
        assert rounds == recipe.schedule(torch.Generator().manual_seed(seed))
    assert len(positions) >= 3  # the first mask-only round is placed at random
    reduced = InteractiveRecipe(correction_rounds=2, mask_only_rounds=1).schedule(_gen(0))
    assert sorted(reduced) == ["click", "click", "mask"]
    assert InteractiveRecipe(correction_rounds=3, mask_only_rounds=0).schedule(_gen(0)) == ["click"] * 3


def test_interactive_loss_is_finite_and_reaches_every_component():
    sam = _model()
    image, masks = _scene()
    embeddings = sam.image_encoder(to_model_input(np.stack([image, image[:, ::-1].copy()]), SPEC))
    targets = [masks, masks.flip(-1)]
    loss, stats = interactive_loss(sam, embeddings, targets, InteractiveRecipe(), _gen(0))
    assert loss.ndim == 0 and math.isfinite(loss.item()) and loss.item() > 0
    assert "iou_last" in stats and ({"iou_first_box", "iou_first_point"} & set(stats))
    assert all(0.0 <= v <= 1.0 for v in stats.values())
    loss.backward()
    for prefix in ("image_encoder.", "mask_decoder.", "prompt_encoder."):
        grads = [p.grad for _, p in _params(sam, prefix) if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), prefix
    # every encoder weight trains; the mask prompt path and the IoU head receive gradient
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in _params(sam, "image_encoder."))
    for prefix in ("prompt_encoder.mask_downscaling.", "mask_decoder.iou_prediction_head."):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in _params(sam, prefix)), prefix


@pytest.mark.parametrize("point_first", [0.0, 1.0])
def test_first_prompt_kind_follows_the_recipe(point_first):
    sam = _model()
    image, masks = _scene()
    recipe = InteractiveRecipe(correction_rounds=1, mask_only_rounds=1, point_first_probability=point_first)
    with torch.no_grad():
        embeddings = sam.image_encoder(to_model_input(image[None], SPEC))
        _, stats = interactive_loss(sam, embeddings, [masks], recipe, torch.Generator().manual_seed(0))
    assert ("iou_first_point" in stats) == (point_first == 1.0)
    assert ("iou_first_box" in stats) == (point_first == 0.0)


def test_interactive_loss_is_deterministic_given_the_generator_seed():
    sam = _model()
    image, masks = _scene()
    recipe = InteractiveRecipe(correction_rounds=3, mask_only_rounds=2)
    with torch.no_grad():
        embeddings = sam.image_encoder(to_model_input(image[None], SPEC))
        first = interactive_loss(sam, embeddings, [masks], recipe, _gen(5))
        again = interactive_loss(sam, embeddings, [masks], recipe, _gen(5))
        losses = {interactive_loss(sam, embeddings, [masks], recipe, _gen(s))[0].item() for s in range(6)}
    assert torch.equal(first[0], again[0])
    assert first[1] == again[1]
    assert len(losses) > 1  # the seed drives prompts, noise, clicks and schedule


def test_images_without_objects_are_skipped():
    sam = _model()
    image, masks = _scene()
    embeddings = sam.image_encoder(to_model_input(np.stack([image, image]), SPEC))
    recipe = InteractiveRecipe(correction_rounds=1, mask_only_rounds=1)
    empty = torch.zeros(0, S, S, dtype=torch.bool)
    with_empty, _ = interactive_loss(sam, embeddings, [masks, empty], recipe, _gen(1))
    alone, _ = interactive_loss(sam, embeddings[:1], [masks], recipe, _gen(1))
    assert torch.allclose(with_empty, alone)
    nothing, stats = interactive_loss(sam, embeddings, [empty, empty], recipe, _gen(1))
    assert nothing.item() == 0.0 and stats == {}
    nothing.backward()  # still part of the graph: a training step on an empty batch does not crash


def test_a_few_steps_overfit_one_image():
    sam = _model(seed=1)
    image, masks = _scene()
    x = to_model_input(image[None], SPEC)
    recipe = InteractiveRecipe(correction_rounds=2, mask_only_rounds=1, loss_size=None)

    def loss_at_fixed_prompts() -> torch.Tensor:
        return interactive_loss(sam, sam.image_encoder(x), [masks], recipe, _gen(1))[0]

    with torch.no_grad():
        before = loss_at_fixed_prompts().item()
    optimizer = torch.optim.Adam(sam.parameters(), lr=3e-3)
    for _ in range(15):
        optimizer.zero_grad()
        loss_at_fixed_prompts().backward()
        optimizer.step()
    with torch.no_grad():
        after = loss_at_fixed_prompts().item()
    assert after < 0.7 * before, (before, after)  # measured 3.27 -> 1.49


def test_backward_round_by_round_gives_the_gradients_of_the_whole_loss():
    """``backward=True`` (what pretraining uses, for memory) computes the gradients of ``loss.backward()``."""
    image, masks = _scene()
    x = to_model_input(np.stack([image, image[:, ::-1].copy()]), SPEC)
    targets = [masks, torch.zeros(0, S, S, dtype=torch.bool), masks.flip(-1)]  # an empty image is skipped
    x = torch.cat([x[:1], x[:1], x[1:]])
    recipe = InteractiveRecipe(correction_rounds=3, mask_only_rounds=2)
    results = []
    for backward in (False, True):
        sam = _model()
        loss, stats = interactive_loss(sam, sam.image_encoder(x), targets, recipe, _gen(3), backward=backward)
        if not backward:
            loss.backward()
        assert not loss.requires_grad or not backward
        results.append((loss.detach(), stats, {n: p.grad for n, p in sam.named_parameters() if p.grad is not None}))
    (whole, whole_stats, whole_grads), (rounds, round_stats, round_grads) = results
    # The forward passes are the same operations on the same values; only how the loss's terms are summed
    # differs (a mean of means vs. per-round shares), so float32 rounding (~1e-7 relative) is the whole gap.
    assert whole_stats == round_stats
    assert rounds.item() == pytest.approx(whole.item(), rel=1e-5)
    assert whole_grads.keys() == round_grads.keys()
    assert any(n.startswith("image_encoder.") for n in round_grads)  # the encoder got its gradient too
    for name, grad in whole_grads.items():
        # Gradients are sums of 12 round terms (2 images x 6 rounds) accumulated in another order: float32
        # reassociation error is a few ulps of the largest term. Bound it relative to the tensor's largest
        # entry (1e-4 of it: ~1000 ulps of margin, far below any real difference, which is O(1) relative).
        scale = float(grad.abs().max())
        torch.testing.assert_close(round_grads[name], grad, rtol=1e-4, atol=1e-4 * scale + 1e-12, msg=name)
