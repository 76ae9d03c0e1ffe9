"""Per-mask segmentation losses: hand-computed values, shapes, IoU conventions, IoU-head gradient."""

from __future__ import annotations

import math

import pytest
import torch

from samadapt.training.losses import bce_loss, dice_loss, focal_loss, iou_head_loss, mask_iou

LN2 = math.log(2.0)


def _half_target() -> torch.Tensor:
    target = torch.zeros(1, 2, 2)
    target[0, 0] = 1  # 2 of 4 pixels
    return target


def test_values_at_zero_logits_by_hand():
    logits, target = torch.zeros(1, 2, 2), _half_target()
    # p = 0.5 everywhere: ce = ln 2, (1 - p_t)^2 = 1/4, alpha weight 1/4 (positives) or 3/4 (negatives)
    assert focal_loss(logits, target).item() == pytest.approx(LN2 * 0.25 * (0.5 * 0.25 + 0.5 * 0.75))
    # dice: 1 - (2 * 1 + 1) / (2 + 2 + 1)
    assert dice_loss(logits, target).item() == pytest.approx(0.4)
    assert bce_loss(logits, target).item() == pytest.approx(LN2)
    assert focal_loss(logits, target, alpha=-1).item() == pytest.approx(LN2 * 0.25)  # alpha < 0: unweighted


def test_focal_single_pixel_by_hand():
    x = 1.3
    p = 1 / (1 + math.exp(-x))
    positive = focal_loss(torch.full((1, 1, 1), x), torch.ones(1, 1, 1), alpha=0.25, gamma=2.0).item()
    negative = focal_loss(torch.full((1, 1, 1), x), torch.zeros(1, 1, 1), alpha=0.25, gamma=2.0).item()
    assert positive == pytest.approx(-math.log(p) * (1 - p) ** 2 * 0.25)
    assert negative == pytest.approx(-math.log(1 - p) * p**2 * 0.75)
    gamma0 = focal_loss(torch.full((1, 1, 1), x), torch.ones(1, 1, 1), alpha=-1, gamma=0.0).item()
    assert gamma0 == pytest.approx(-math.log(p))  # gamma 0, no alpha: plain BCE


def test_perfect_and_inverted_logits():
    target = torch.zeros(2, 16, 16)
    target[0, 4:10, 3:12] = 1
    target[1, 8:, :] = 1
    perfect = (target * 2 - 1) * 30
    assert dice_loss(perfect, target).max() < 1e-6
    assert focal_loss(perfect, target).max() < 1e-10
    assert bce_loss(perfect, target).max() < 1e-10
    assert torch.equal(mask_iou(perfect, target), torch.ones(2))
    inverted = -perfect
    assert dice_loss(inverted, target).min() > 0.99
    assert focal_loss(inverted, target).min() > 5  # ~30 nats x alpha
    assert bce_loss(inverted, target).min() > 29
    assert torch.equal(mask_iou(inverted, target), torch.zeros(2))


@pytest.mark.parametrize("loss", [focal_loss, dice_loss, bce_loss, mask_iou])
def test_one_value_per_mask(loss):
    logits = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    targets = torch.rand(3, 4, 8, 8, generator=torch.Generator().manual_seed(1)) > 0.5
    values = loss(logits, targets)
    assert values.shape == (3, 4)
    assert loss(logits[:, 0], targets[:, 0]).shape == (3,)
    # masks are independent: changing one mask's logits changes only its own value
    changed = logits.clone()
    changed[1, 2] = -changed[1, 2]
    other = loss(changed, targets)
    keep = torch.ones(3, 4, dtype=torch.bool)
    keep[1, 2] = False
    assert torch.equal(other[keep], values[keep])
    assert not torch.equal(other[1, 2], values[1, 2])


def test_losses_accept_bool_targets_and_match_float_targets():
    logits = torch.randn(2, 8, 8, generator=torch.Generator().manual_seed(2))
    targets = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(3)) > 0.3
    for loss in (focal_loss, dice_loss, bce_loss):
        assert torch.allclose(loss(logits, targets), loss(logits, targets.float()))


def test_mask_iou_conventions():
    empty = torch.zeros(1, 4, 4, dtype=torch.bool)
    full = torch.ones(1, 4, 4, dtype=torch.bool)
    assert mask_iou(torch.full((1, 4, 4), -5.0), empty).item() == 1.0  # empty vs empty
    assert mask_iou(torch.full((1, 4, 4), -5.0), full).item() == 0.0  # empty vs non-empty
    assert mask_iou(torch.full((1, 4, 4), 5.0), empty).item() == 0.0
    # logit 0 is background (strict threshold)
    assert mask_iou(torch.zeros(1, 4, 4), full).item() == 0.0
    logits = torch.full((1, 4, 4), -1.0)
    logits[0, :2] = 1.0  # predicted: top 8 pixels
    target = torch.zeros(1, 4, 4, dtype=torch.bool)
    target[0, 1:3] = True  # target: middle 8 pixels; overlap 4, union 12
    assert mask_iou(logits, target).item() == pytest.approx(1 / 3)


def test_iou_head_loss_values_and_no_gradient_into_logits():
    logits = torch.full((2, 1, 4, 4), -1.0)
    logits[0, 0, :2] = 1.0
    targets = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    targets[0, 0, 1:3] = True  # IoU 1/3; mask 1: empty vs empty, IoU 1
    logits.requires_grad_(True)
    predicted = torch.tensor([[0.5], [0.25]], requires_grad=True)
    loss = iou_head_loss(predicted, logits, targets)
    assert loss.shape == (2, 1)
    assert torch.allclose(loss.detach(), torch.tensor([[(0.5 - 1 / 3) ** 2], [0.75**2]]))
    loss.sum().backward()
    assert logits.grad is None
    assert torch.allclose(predicted.grad, 2 * (predicted.detach() - torch.tensor([[1 / 3], [1.0]])))


def test_dice_and_focal_gradients_point_towards_the_target():
    target = torch.zeros(1, 8, 8)
    target[0, 2:6, 2:6] = 1
    logits = torch.zeros(1, 8, 8, requires_grad=True)
    (focal_loss(logits, target) + dice_loss(logits, target)).sum().backward()
    assert (logits.grad[target.bool()] < 0).all()  # raising foreground logits lowers the loss
    assert (logits.grad[~target.bool()] > 0).all()
