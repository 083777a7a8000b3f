"""Losses and metrics on hand-made inputs, the empty case included."""

from __future__ import annotations

import pytest
import torch

from harness.config.catalog import BINARY_LOSSES, MULTICLASS_LOSSES
from harness.losses import LOSSES, bce, bce_sigmoid_amp, bce_with_logits, get_loss
from harness.metrics import MetricAccumulator, confusion, scores, summarise

BIG = 20.0  # a logit far enough from 0 that sigmoid is 0 or 1 for practical purposes


def test_bce_matches_bce_with_logits_in_float32():
    torch.manual_seed(0)
    logits = torch.randn(4, 1, 16, 16) * 3
    target = (torch.rand(4, 1, 16, 16) > 0.5).float()
    assert torch.allclose(bce(logits, target), bce_with_logits(logits, target), atol=1e-5)
    grads = []
    for loss in (bce, bce_with_logits):  # the gradients agree too, far below bf16's resolution (~4e-3)
        x = logits.clone().requires_grad_()
        loss(x, target).backward()
        grads.append(x.grad)
    assert torch.allclose(grads[0], grads[1], rtol=1e-5, atol=1e-12)


def test_bce_runs_under_autocast_in_float32():
    logits = torch.randn(2, 1, 8, 8, dtype=torch.bfloat16)
    target = torch.ones(2, 1, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = bce(logits, target)
    assert loss.dtype == torch.float32


def test_bce_sigmoid_amp_saturates_under_bf16_and_is_bce_without_it():
    target = torch.zeros(1, 1, 2, 2)  # background everywhere
    logits = torch.full((1, 1, 2, 2), 8.0)  # confident false positives: bf16 sigmoid(8) is exactly 1.0
    assert torch.allclose(bce_sigmoid_amp(logits, target), bce(logits, target))  # float32: no difference
    for loss, expect_saturated in ((bce_sigmoid_amp, True), (bce, False)):
        x = logits.clone().to(torch.bfloat16).requires_grad_()  # the dtype a model's logits have under autocast
        with torch.autocast("cpu", dtype=torch.bfloat16):
            value = loss(x, target)
        value.backward()
        assert (value.item() == pytest.approx(100.0)) == expect_saturated  # log(1 - 1) clamped at -100
        assert (x.grad.abs().max().item() == 0.0) == expect_saturated  # no gradient to correct the mistake


@pytest.mark.parametrize("name", BINARY_LOSSES)
def test_losses_are_lower_for_better_predictions(name):
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, 2:6, 2:6] = 1
    good = torch.where(target > 0, BIG / 4, -BIG / 4)
    loss = get_loss(name)
    assert loss(good, target) < loss(-good, target)
    assert loss(good, target) >= 0


@pytest.mark.parametrize("name", MULTICLASS_LOSSES)
def test_multiclass_losses_are_lower_for_better_predictions(name):
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    target[:, 2:6, 2:6] = 2
    good = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 8.0
    loss = get_loss(name)
    assert loss(good, target) < loss(-good, target) and loss(good, target) >= 0


def test_every_loss_is_tested():
    assert set(LOSSES) == set(BINARY_LOSSES) | set(MULTICLASS_LOSSES)


def test_unknown_loss_lists_valid():
    with pytest.raises(ValueError, match="bce_with_logits"):
        get_loss("focal")


def _logits(mask):
    return torch.where(mask > 0, BIG, -BIG)


def test_dice_and_iou_on_hand_made_masks():
    truth = torch.zeros(1, 1, 4, 4)
    truth[..., :2, :] = 1              # 8 foreground pixels
    pred = torch.zeros(1, 1, 4, 4)
    pred[..., :1, :] = 1               # 4 predicted, all inside truth
    pred[..., 3, 0] = 1                # 1 false positive
    counts = confusion(_logits(pred), truth)
    assert counts.tolist() == [[4, 1, 4, 7]]  # TP FP FN TN
    s = scores(counts)
    assert s["dice"].item() == pytest.approx(2 * 4 / (2 * 4 + 1 + 4))
    assert s["iou"].item() == pytest.approx(4 / (4 + 1 + 4))


def test_empty_truth_and_empty_prediction_score_one():
    empty = torch.zeros(1, 1, 5, 5)
    s = summarise(confusion(_logits(empty), empty))
    assert s["dice"] == 1.0 and s["iou"] == 1.0 and s["pixel_acc"] == 1.0


def test_empty_truth_with_false_positive_scores_zero():
    truth = torch.zeros(1, 1, 5, 5)
    pred = truth.clone()
    pred[..., 0, 0] = 1
    s = scores(confusion(_logits(pred), truth))
    assert s["dice"].item() == 0.0


def test_per_image_mean_differs_from_micro():
    truth = torch.zeros(2, 1, 4, 4)
    truth[0] = 1                       # image 0: 16 fg pixels, all found
    truth[1, :, 0, 0] = 1              # image 1: 1 fg pixel, missed
    pred = truth.clone()
    pred[1] = 0
    acc = MetricAccumulator()
    acc.update(_logits(pred), truth)
    m = acc.compute()
    assert m["dice"] == pytest.approx(0.5)            # (1 + 0) / 2
    assert m["dice_micro"] == pytest.approx(32 / 33)  # 2*16 / (2*16 + 0 + 1)


def test_threshold_is_applied():
    truth = torch.ones(1, 1, 2, 2)
    logits = torch.full((1, 1, 2, 2), 0.2)  # sigmoid ~ 0.55
    assert scores(confusion(logits, truth, threshold=0.5))["dice"].item() == 1.0
    assert scores(confusion(logits, truth, threshold=0.6))["dice"].item() == 0.0
