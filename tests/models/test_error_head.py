"""The error head learns where a mask is wrong (better than chance), saves beside a model, and suggests clicks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from samadapt.errors import CheckpointError
from samadapt.models.error_head import (
    ErrorHead,
    error_head_loss,
    load_error_head,
    save_error_head,
    suggest_next_clicks,
    true_error,
)

SIZE, LOW = 64, 16  # the test_micro frame and its low-res grid


def _problem(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Discs (truth) and predictions that are the discs moved and resized: low-res logits (a sure +-8 inside /
    outside the predicted disc, so their size says nothing about where the error is), the IoU head's guess, an
    embedding (the same image for every seed), the truth."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(SIZE).float(), torch.arange(SIZE).float(), indexing="ij")
    centre = 16 + 32 * torch.rand(n, 2, generator=g)
    radius = 6 + 8 * torch.rand(n, generator=g)
    moved = centre + 6 * (torch.rand(n, 2, generator=g) - 0.5)
    scaled = radius * (0.75 + 0.5 * torch.rand(n, generator=g))
    def distance(points: torch.Tensor) -> torch.Tensor:
        return torch.sqrt((xs - points[:, 0, None, None]) ** 2 + (ys - points[:, 1, None, None]) ** 2)

    truth = distance(centre) < radius[:, None, None]
    sure = 8.0 * torch.sign(scaled[:, None, None] - distance(moved))
    low_res = F.adaptive_avg_pool2d(sure[:, None], LOW)[:, 0]
    embedding = torch.randn(1, 32, 4, 4, generator=torch.Generator().manual_seed(99))
    return low_res, torch.full((n,), 0.7), embedding, truth


def _auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    order = scores.flatten().argsort()
    ranks = torch.empty_like(order, dtype=torch.float64)
    ranks[order] = torch.arange(1, len(order) + 1, dtype=torch.float64)
    positive = labels.flatten()
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def test_the_head_learns_the_true_error_better_than_chance():
    torch.manual_seed(0)
    head = ErrorHead(32)
    optimiser = torch.optim.Adam(head.parameters(), lr=1e-2)
    low_res, iou, embedding, truth = _problem(24, seed=0)
    logits = F.interpolate(low_res[:, None], SIZE, mode="bilinear", align_corners=False)[:, 0]
    target = true_error(logits, truth)
    with torch.no_grad():
        untrained = float(error_head_loss(head(low_res, iou, embedding, SIZE), target).mean())
    for _ in range(100):
        optimiser.zero_grad()
        error_head_loss(head(low_res, iou, embedding, SIZE), target).mean().backward()
        optimiser.step()
    low_res, iou, embedding, truth = _problem(16, seed=1)  # held out
    logits = F.interpolate(low_res[:, None], SIZE, mode="bilinear", align_corners=False)[:, 0]
    target = true_error(logits, truth)
    with torch.no_grad():
        predicted = head(low_res, iou, embedding, SIZE)
    loss = float(error_head_loss(predicted, target).mean())
    prior = float(target.mean())
    constant = -(prior * math.log(prior) + (1 - prior) * math.log(1 - prior))  # best constant guess
    assert loss < 0.85 * constant and loss < 0.8 * untrained
    assert _auroc(predicted, target > 0.5) > 0.85  # 0.5 is chance


def test_saved_head_loads_and_bad_files_are_checkpoint_errors(tmp_path):
    head = ErrorHead(32)
    path = save_error_head(head, tmp_path / "error_head.pth", {"model": "model.pth"})
    again = load_error_head(path)
    low_res, iou, embedding, _ = _problem(2, seed=3)
    torch.testing.assert_close(again(low_res, iou, embedding, SIZE), head(low_res, iou, embedding, SIZE))
    with pytest.raises(CheckpointError, match="no error head"):
        load_error_head(tmp_path / "missing.pth")
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    (tmp_path / "bad.json").write_text('{"embed_dim": 32, "hidden": 16, "embedding_channels": 8}')
    with pytest.raises(CheckpointError, match="bad.pth"):
        load_error_head(tmp_path / "bad.pth")


def test_suggestions_come_from_the_predicted_error_without_truth():
    head = ErrorHead(32)
    low_res, iou, embedding, _ = _problem(3, seed=4)
    points, labels, probability = suggest_next_clicks(head, low_res, iou, embedding, SIZE)
    assert points.shape == (3, 2) and probability.shape == (3, SIZE, SIZE)
    current = F.interpolate(low_res[:, None], SIZE, mode="bilinear", align_corners=False)[:, 0] > 0
    inside = current[torch.arange(3), points[:, 1].long(), points[:, 0].long()]
    assert torch.equal(labels, (~inside).long())


def test_image_features_and_upscaled_logits_given_once_change_nothing():
    """PHPG computes the embedding's features once per slice and hands in the logits it already upscaled."""
    torch.manual_seed(0)
    head = ErrorHead(32)
    low_res, iou, embedding, _ = _problem(3, seed=5)
    plain = head(low_res, iou, embedding, SIZE)
    upscaled = F.interpolate(low_res[:, None], SIZE, mode="bilinear", align_corners=False)[:, 0]
    given = head(low_res, iou, embedding, SIZE, image=head.image_features(embedding, LOW), upscaled_logits=upscaled)
    torch.testing.assert_close(given, plain)
    at_grid = head(low_res, iou, embedding, LOW)  # the grid is the frame (LiteMedSAM): no resampling
    assert at_grid.shape == (3, LOW, LOW)


def test_the_image_part_of_the_first_layer_once_is_the_convolution_of_all_features():
    """The first layer split into its image channels (once per slice) and its per-mask channels is the same
    function, and the same gradients, as that layer over the concatenated features."""
    torch.manual_seed(0)
    head = ErrorHead(32)
    with torch.no_grad():  # a trained-looking head: every layer matters
        for param in head.parameters():
            param.add_(0.05 * torch.randn_like(param))
    low_res, iou, embedding, truth = _problem(3, seed=6)

    def concatenated() -> torch.Tensor:
        logits = low_res[:, None]
        image = F.interpolate(head.reduce(embedding), LOW, mode="bilinear", align_corners=False)
        probability = logits.sigmoid()
        features = torch.cat([image.expand(3, -1, -1, -1), logits.clamp(-20, 20) / 10, probability,
                              1 - (2 * probability - 1).abs(), iou.reshape(3, 1, 1, 1).expand(3, 1, LOW, LOW)], dim=1)
        residual = F.interpolate(head.body(features), SIZE, mode="bilinear", align_corners=False)[:, 0]
        upscaled = F.interpolate(logits, SIZE, mode="bilinear", align_corners=False)[:, 0]
        offset, slope = head.boundary * head.lr_gain
        return residual + offset - slope * upscaled.clamp(-20, 20).abs()

    results = []
    for forward in (concatenated, lambda: head(low_res, iou, embedding, SIZE)):
        head.zero_grad()
        out = forward()
        error_head_loss(out, true_error(out.detach(), truth)).mean().backward()
        results.append((out.detach(), [p.grad.clone() for p in head.parameters()]))
    (a, grads_a), (b, grads_b) = results
    torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)  # float rounding of a different summation order
    for x, y in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(y, x, atol=1e-5, rtol=1e-4)
