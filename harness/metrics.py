"""Binary segmentation metrics, accumulated on the device and read once per evaluation.

Definitions (prediction = sigmoid(logit) > threshold; foreground rule as in the spec):
- Dice = 2 TP / (2 TP + FP + FN); IoU = TP / (TP + FP + FN).
- Per-image: computed on each image, then averaged over images (`dice`, `iou`).
- Dataset-level (micro): TP, FP, FN summed over all pixels of all images (`dice_micro`, `iou_micro`).
- Empty case: an image with empty truth and empty prediction scores Dice = IoU = 1.
- Pixel accuracy = (TP + TN) / pixels, over the whole set.
"""

from __future__ import annotations

import math

import torch


def confusion(logits: torch.Tensor, target: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """(N, 1, H, W) logits and targets -> (N, 4) int64 counts [TP, FP, FN, TN] per image."""
    pred = logits > math.log(threshold / (1 - threshold))  # sigmoid(x) > t, without the sigmoid
    truth = target > 0.5
    dims = tuple(range(1, pred.ndim))
    tp = (pred & truth).sum(dims)
    fp = (pred & ~truth).sum(dims)
    fn = (~pred & truth).sum(dims)
    tn = (~pred & ~truth).sum(dims)
    return torch.stack([tp, fp, fn, tn], dim=1)


def scores(counts: torch.Tensor) -> dict[str, torch.Tensor]:
    """(N, 4) counts -> per-image 'dice' and 'iou' tensors (N,), with the empty case = 1."""
    tp, fp, fn = counts[:, 0].double(), counts[:, 1].double(), counts[:, 2].double()
    empty = (tp + fp + fn) == 0
    dice = torch.where(empty, torch.ones_like(tp), 2 * tp / (2 * tp + fp + fn).clamp_min(1))
    iou = torch.where(empty, torch.ones_like(tp), tp / (tp + fp + fn).clamp_min(1))
    return {"dice": dice, "iou": iou}


def summarise(counts: torch.Tensor) -> dict[str, float]:
    """(N, 4) counts -> per-image means, micro scores and pixel accuracy, as floats."""
    per = scores(counts)
    total = counts.sum(0, keepdim=True)
    micro = scores(total)
    acc = (total[0, 0] + total[0, 3]).double() / total.sum().clamp_min(1)
    return {
        "dice": per["dice"].mean().item(),
        "iou": per["iou"].mean().item(),
        "dice_micro": micro["dice"].item(),
        "iou_micro": micro["iou"].item(),
        "pixel_acc": acc.item(),
    }


class MetricAccumulator:
    """Collect per-image confusion counts on the device; one host sync in `compute()`."""

    def __init__(self, threshold: float = 0.5):
        self.threshold = threshold
        self.parts: list[torch.Tensor] = []

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        self.parts.append(confusion(logits.detach(), target, self.threshold))

    def counts(self) -> torch.Tensor:
        return torch.cat(self.parts).cpu() if self.parts else torch.zeros((0, 4), dtype=torch.long)

    def compute(self) -> dict[str, float]:
        return summarise(self.counts())
