"""Losses by short name. All take logits (N, 1, H, W) and float targets in {0, 1}, same shape.

`bce` is the "sigmoid then BCELoss" formulation some reports use. BCELoss refuses autocast
(it is unsafe in half precision), so it runs in float32 with autocast disabled; the same holds
for every loss here, so that the loss value never depends on the AMP setting.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def _fp32(fn):
    def wrapped(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return fn(logits.float(), target.float())
    wrapped.__name__ = fn.__name__
    wrapped.__doc__ = fn.__doc__
    return wrapped


@_fp32
def bce(logits, target):
    """sigmoid -> BCELoss (log clamped at -100 by PyTorch; prefer bce_with_logits)."""
    return F.binary_cross_entropy(torch.sigmoid(logits), target)


@_fp32
def bce_with_logits(logits, target):
    """Numerically stable BCE on logits (log-sum-exp form)."""
    return F.binary_cross_entropy_with_logits(logits, target)


def _soft_dice(logits, target, eps: float = 1.0):
    probs = torch.sigmoid(logits)
    dims = tuple(range(1, probs.ndim))
    inter = (probs * target).sum(dims)
    denom = probs.sum(dims) + target.sum(dims)
    return 1.0 - ((2 * inter + eps) / (denom + eps)).mean()


@_fp32
def dice(logits, target):
    """Soft Dice loss, per image then averaged; eps=1 makes an empty/empty image cost ~0."""
    return _soft_dice(logits, target)


@_fp32
def bce_dice(logits, target):
    """bce_with_logits + soft Dice, equally weighted."""
    return F.binary_cross_entropy_with_logits(logits, target) + _soft_dice(logits, target)


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "bce": bce,
    "bce_with_logits": bce_with_logits,
    "dice": dice,
    "bce_dice": bce_dice,
}


def get_loss(name: str):
    if name not in LOSSES:
        raise ValueError(f"unknown loss '{name}'; valid: {', '.join(LOSSES)}")
    return LOSSES[name]
