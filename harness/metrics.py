"""Segmentation metrics, accumulated on the device and read once per evaluation.

Binary (one logit per pixel):

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
    """Collect per-image confusion counts on the device; one host sync in `compute()`.

    num_classes 2: binary counts (N, 4); K >= 3: per-class counts (N, K, 3)."""

    def __init__(self, threshold: float = 0.5, num_classes: int = 2):
        self.threshold, self.num_classes = threshold, num_classes
        self.parts: list[torch.Tensor] = []

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        if self.num_classes > 2:
            self.parts.append(confusion_multiclass(logits.detach(), target))
        else:
            self.parts.append(confusion(logits.detach(), target, self.threshold))

    def counts(self) -> torch.Tensor:
        empty = (0, self.num_classes, 3) if self.num_classes > 2 else (0, 4)
        return torch.cat(self.parts).cpu() if self.parts else torch.zeros(empty, dtype=torch.long)

    def compute(self) -> dict[str, float]:
        return summarise_counts(self.counts())


def summarise_counts(counts: torch.Tensor) -> dict[str, float]:
    """Binary (N, 4) or K-class (N, K, 3) counts -> the metrics of that task."""
    return summarise_multiclass(counts) if counts.ndim == 3 else summarise(counts)


def per_image_scores(counts: torch.Tensor) -> dict[str, torch.Tensor]:
    return scores_multiclass(counts) if counts.ndim == 3 else scores(counts)


# ----------------------------------------------------------------------------- K classes
# Prediction = argmax over the K logits. Per class k: TP/FP/FN of "pixel is k". Dataset-level
# per-class Dice/IoU sum the counts over all images; `dice` is their mean over classes (macro),
# `miou` the mean IoU, `pixel_acc` the share of pixels whose class is right. Per image, `dice` is
# the mean over the classes present in the truth or the prediction.


def confusion_multiclass(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N, K, H, W) logits, (N, H, W) int64 classes -> (N, K, 3) int64 counts [TP, FP, FN]."""
    k = logits.shape[1]
    pred = nn_one_hot(logits.argmax(1), k)
    truth = nn_one_hot(target, k)
    tp = (pred & truth).sum((2, 3))
    fp = (pred & ~truth).sum((2, 3))
    fn = (~pred & truth).sum((2, 3))
    return torch.stack([tp, fp, fn], dim=2)


def nn_one_hot(labels: torch.Tensor, k: int) -> torch.Tensor:
    """(N, H, W) int -> (N, K, H, W) bool."""
    return labels.unsqueeze(1) == torch.arange(k, device=labels.device).view(1, k, 1, 1)


def scores_multiclass(counts: torch.Tensor) -> dict[str, torch.Tensor]:
    """(N, K, 3) counts -> per-image 'dice' and 'iou' (N,): means over the classes present."""
    tp, fp, fn = (counts[..., i].double() for i in range(3))
    present = (tp + fp + fn) > 0
    dice = torch.where(present, 2 * tp / (2 * tp + fp + fn).clamp_min(1), torch.zeros_like(tp))
    iou = torch.where(present, tp / (tp + fp + fn).clamp_min(1), torch.zeros_like(tp))
    n = present.sum(1).clamp_min(1)
    return {"dice": dice.sum(1) / n, "iou": iou.sum(1) / n}


def summarise_multiclass(counts: torch.Tensor) -> dict[str, float]:
    """(N, K, 3) counts -> macro Dice, mIoU, pixel accuracy and per-class Dice/IoU, as floats."""
    total = counts.sum(0).double()  # (K, 3)
    tp, fp, fn = total[:, 0], total[:, 1], total[:, 2]
    dice = 2 * tp / (2 * tp + fp + fn).clamp_min(1)
    iou = tp / (tp + fp + fn).clamp_min(1)
    per = scores_multiclass(counts)
    out = {"dice": dice.mean().item(), "iou": iou.mean().item(), "miou": iou.mean().item(),
           "dice_per_image": per["dice"].mean().item(),
           "pixel_acc": (tp.sum() / (tp + fn).sum().clamp_min(1)).item()}
    for k in range(len(dice)):
        out[f"dice_class/{k}"] = dice[k].item()
        out[f"iou_class/{k}"] = iou[k].item()
    return out
