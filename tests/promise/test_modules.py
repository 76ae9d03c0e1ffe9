"""APM and IPS on a micro SAM: shapes and frames, the shift inside the frozen decoder, gradients."""

from __future__ import annotations

import pytest
import torch

from samadapt.models.decoder import SamDecoder
from samadapt.models.registry import REGISTRY
from samadapt.models.sam import build_sam
from samadapt.promise import AdapterSpec, PromiseAdapter
from samadapt.promise.apm import class_priors, initial_point_layout

SPEC = REGISTRY["test_micro"]  # 64 px input, 4x4 grid, encoder width 32, decoder width 32


@pytest.fixture(scope="module")
def sam():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_sam(SPEC)
    return model.requires_grad_(False)


def _adapter(kind: str = "resnet", has_apm: bool = True, has_ips: bool = True, **kw) -> PromiseAdapter:
    spec = AdapterSpec(classes=("liver", "spleen", "aorta"), image_size=SPEC.image_size,
                       feature_dim=SPEC.encoder_embed_dim, feature_levels=3, grid=SPEC.embedding_size,
                       transformer_dim=SPEC.prompt_embed_dim, num_mask_tokens=4, has_apm=has_apm, has_ips=has_ips,
                       apm_kind=kind, **kw)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        return PromiseAdapter(spec, "micro", "")


def _inputs(batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    features = torch.randn((batch, 3, SPEC.encoder_embed_dim, 4, 4), generator=g)
    embedding = torch.randn((batch, SPEC.prompt_embed_dim, 4, 4), generator=g)
    return features, embedding


@pytest.mark.parametrize("kind", ["resnet", "cross_attention"])
def test_apm_points_per_class_in_the_model_input_frame(kind):
    adapter = _adapter(kind)
    features, embedding = _inputs()
    points, presence = adapter.predict_points(features)
    assert points.shape == (2, 3, 16, 2) and presence.shape == (2, 3)
    assert points.min() >= 0 and points.max() <= SPEC.image_size
    one, labels = adapter.auto_points(features, 2)
    assert one.shape == (2, 16, 2) and torch.equal(one, points[:, 2])
    assert labels.dtype == torch.long and labels.tolist() == [[1] * 8 + [0] * 8] * 2
    assert adapter.presence_probability(features, 0).shape == (2,)
    assert adapter.token_shift(embedding).shape == (2, 4, SPEC.prompt_embed_dim)
    with pytest.raises(IndexError):
        adapter.auto_points(features, 3)


def test_missing_parts_answer_none_or_refuse():
    features, embedding = _inputs()
    assert _adapter(has_ips=False).token_shift(embedding) is None
    assert _adapter(presence_head=False).presence_probability(features, 0) is None
    from samadapt.errors import CheckpointError

    with pytest.raises(CheckpointError, match="no APM"):
        _adapter(has_apm=False).auto_points(features, 0)


def test_initial_layout_follows_the_class_prior():
    priors = class_priors([[(10, 20, 30, 40)], []], image_size=64)
    assert priors[0].tolist() == [20.0, 30.0, 10.0, 10.0] and priors[1].tolist() == [32.0, 32.0, 16.0, 16.0]
    layout = initial_point_layout(priors, 8, 8, 64)
    positive_spread = (layout[0, :8] - torch.tensor([20.0, 30.0])).norm(dim=1)
    negative_spread = (layout[0, 8:] - torch.tensor([20.0, 30.0])).norm(dim=1)
    assert positive_spread.max() < negative_spread.min()  # positives inside, negatives around the mean box
    adapter = _adapter()
    adapter.apm.points.set_layout(torch.cat([layout, layout[:1]]))
    untrained, _ = adapter.predict_points(_inputs()[0])
    for k, expected in enumerate([layout[0], layout[1], layout[0]]):  # each class its own points
        assert (untrained[0, k] - expected).abs().max() < 1.0  # small head weights: the layout itself at first


def test_shift_changes_the_frozen_decoders_output_and_only_through_the_tokens(sam):
    _, embedding = _inputs(1)
    box = torch.tensor([[8.0, 8.0, 40.0, 44.0]])
    plain, plain_iou = SamDecoder(sam)(embedding, boxes=box, multimask=True)
    zero, zero_iou = SamDecoder(sam, torch.zeros(1, 4, SPEC.prompt_embed_dim))(embedding, boxes=box,
                                       multimask=True)
    assert torch.equal(plain, zero) and torch.equal(plain_iou, zero_iou)
    shift = torch.randn((1, 4, SPEC.prompt_embed_dim), generator=torch.Generator().manual_seed(5))
    shifted, _ = SamDecoder(sam, shift)(embedding, boxes=box, multimask=True)
    assert shifted.shape == plain.shape and (shifted - plain).abs().max() > 1e-3
    assert sam.mask_decoder.mask_tokens.weight.requires_grad is False  # SAM's own tensor untouched
    again, _ = SamDecoder(sam)(embedding, boxes=box, multimask=True)
    assert torch.equal(again, plain)
    with pytest.raises(ValueError, match="mask tokens"):
        SamDecoder(sam, torch.zeros(1, 3, SPEC.prompt_embed_dim))(embedding, boxes=box)


def test_gradients_reach_apm_and_ips_through_the_frozen_sam_only(sam):
    adapter = _adapter()
    torch.nn.init.normal_(adapter.ips.mlp[2].weight, std=0.1)  # zero-initialised output: give the first layer grad
    features, embedding = _inputs(1)
    points, labels = adapter.auto_points(features, 0)
    low_res, _ = SamDecoder(sam, adapter.token_shift(embedding))(embedding, points=(points, labels),
                                   multimask=True)
    low_res[:, 0].sigmoid().mean().backward()
    for name, param in adapter.named_parameters():
        if name.startswith(("ips.", "apm.head", "apm.points", "apm.fusion.0")):
            assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in sam.parameters())


def test_untrained_ips_is_frozen_sam_exactly(sam):
    adapter = _adapter()
    _, embedding = _inputs(1)
    shift = adapter.token_shift(embedding)
    assert torch.count_nonzero(shift) == 0
    box = torch.tensor([[4.0, 4.0, 30.0, 30.0]])
    assert torch.equal(SamDecoder(sam, shift)(embedding, boxes=box)[0], SamDecoder(sam)(embedding, boxes=box)[0])
