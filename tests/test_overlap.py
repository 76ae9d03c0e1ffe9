"""The one Dice / IoU (samadapt.overlap) and its one empty-mask rule, in every form the library uses it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from samadapt.evaluation.interactive_protocol import overlap_scores
from samadapt.evaluation.metrics import segmentation_scores
from samadapt.overlap import dice, dice_iou, iou
from samadapt.training.losses import mask_iou


def _masks() -> tuple[np.ndarray, np.ndarray]:
    """``6x16x16`` predictions and truths: both empty, each one empty, identical, disjoint, random."""
    rng = np.random.default_rng(0)
    pred, truth = np.zeros((6, 16, 16), bool), np.zeros((6, 16, 16), bool)
    truth[1, 4:8, 4:8] = True  # prediction empty
    pred[2, 4:8, 4:8] = True  # truth empty
    pred[3, 2:9, 2:9] = truth[3, 2:9, 2:9] = True  # identical
    pred[4, :4, :4], truth[4, 8:, 8:] = True, True  # disjoint
    pred[5], truth[5] = rng.random((16, 16)) > 0.5, rng.random((16, 16)) > 0.5
    return pred, truth


def test_the_empty_mask_rule():
    empty, some = np.zeros((8, 8), bool), np.eye(8, dtype=bool)
    assert dice(empty, empty) == iou(empty, empty) == 1.0  # nothing to find, nothing found
    for pred, truth in ((empty, some), (some, empty)):
        assert dice(pred, truth) == iou(pred, truth) == 0.0


def test_hand_counted_values():
    pred, truth = np.zeros((10, 10), bool), np.zeros((10, 10), bool)
    pred[:4, :5], truth[2:6, :5] = True, True  # 20 px each, overlap 2x5 = 10, union 30
    assert dice(pred, truth) == 2 * 10 / 40 and iou(pred, truth) == 10 / 30
    volume_pred, volume_truth = np.stack([pred, pred]), np.stack([truth, np.zeros_like(truth)])
    assert dice(volume_pred, volume_truth) == 2 * 10 / 60  # 3D: counts over the whole volume


def test_every_form_gives_the_same_scores():
    pred, truth = _masks()
    expected_dice = [dice(p, t) for p, t in zip(pred, truth, strict=True)]
    expected_iou = [iou(p, t) for p, t in zip(pred, truth, strict=True)]
    assert expected_dice[:5] == [1.0, 0.0, 0.0, 1.0, 0.0] and 0 < expected_dice[5] < 1
    batch_dice, batch_iou = dice_iou(torch.from_numpy(pred), torch.from_numpy(truth))
    assert batch_dice.dtype == torch.float64 and batch_dice.tolist() == expected_dice
    assert batch_iou.tolist() == expected_iou
    scores = overlap_scores(torch.from_numpy(pred), torch.from_numpy(truth))  # the interactive protocol's
    assert scores["dice"].tolist() == expected_dice and scores["iou"].tolist() == expected_iou
    logits = torch.where(torch.from_numpy(pred), 4.0, -4.0)
    assert mask_iou(logits, torch.from_numpy(truth)).tolist() == pytest.approx(expected_iou, rel=1e-6)  # float32
    for p, t, d, i in zip(pred, truth, expected_dice, expected_iou, strict=True):
        assert (segmentation_scores(p, t)["dice"], segmentation_scores(p, t)["iou"]) == (d, i)


def test_batch_shapes_and_checks():
    pred, truth = _masks()
    batch = torch.from_numpy(pred).reshape(2, 3, 16, 16), torch.from_numpy(truth).reshape(2, 3, 16, 16)
    assert dice_iou(*batch)[0].shape == (2, 3)
    volumes = dice_iou(torch.from_numpy(pred)[None], torch.from_numpy(truth)[None], dims=3)[0]
    assert volumes.tolist() == [dice(pred, truth)]
    with pytest.raises(ValueError, match="same shape"):
        dice_iou(torch.zeros(2, 4, 4, dtype=torch.bool), torch.zeros(2, 4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="2D"):
        dice(np.zeros(4, bool), np.zeros(4, bool))
