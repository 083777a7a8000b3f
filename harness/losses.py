"""Losses by short name.

Binary losses take logits (N, 1, H, W) and float targets in {0, 1}, same shape; the K-class
losses (`ce`, `ce_dice`) take logits (N, K, H, W) and int64 class maps (N, H, W).

`bce` is the "sigmoid then BCELoss" formulation some reports use. BCELoss refuses autocast
(it is unsafe in half precision), so it runs in float32 with autocast disabled; the same holds
for every loss here but `bce_sigmoid_amp`, so that the loss value does not depend on the AMP
setting. In float32 `bce` and `bce_with_logits` give gradients equal to ~1e-7 relative, which
bf16 autocast then rounds away: same-seed runs of the two train the same model.

`bce_sigmoid_amp` is the pitfall the textbook warning is about: the sigmoid runs in the logits'
own dtype (bf16/fp16 under AMP, as in a model whose last layer is nn.Sigmoid) and only BCELoss in
float32. A bf16 sigmoid is exactly 1.0 for logits above ~6.2, so a confident false positive
costs 100 (PyTorch clamps log at -100) and passes back no gradient. With amp off it is `bce`.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def _fp32(fn):
    def wrapped(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return fn(logits.float(), target if target.dtype == torch.long else target.float())
    wrapped.__name__ = fn.__name__
    wrapped.__doc__ = fn.__doc__
    return wrapped


@_fp32
def bce(logits, target):
    """sigmoid -> BCELoss (log clamped at -100 by PyTorch; prefer bce_with_logits)."""
    return F.binary_cross_entropy(torch.sigmoid(logits), target)


_bce_on_probs = _fp32(F.binary_cross_entropy)


def bce_sigmoid_amp(logits, target):
    """sigmoid in the logits' dtype (the autocast dtype under AMP), then BCELoss in float32."""
    return _bce_on_probs(torch.sigmoid(logits), target)  # bf16 sigmoid: exactly 1.0 above ~6.2


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


@_fp32
def ce(logits, target):
    """Cross-entropy over K classes (softmax)."""
    return F.cross_entropy(logits, target)


@_fp32
def ce_dice(logits, target, eps: float = 1.0):
    """Cross-entropy + soft Dice of the softmax against one-hot truth, averaged over classes."""
    probs = torch.softmax(logits, dim=1)
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    inter = (probs * onehot).sum((0, 2, 3))
    denom = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    return F.cross_entropy(logits, target) + 1.0 - ((2 * inter + eps) / (denom + eps)).mean()


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "bce": bce,
    "bce_with_logits": bce_with_logits,
    "bce_sigmoid_amp": bce_sigmoid_amp,
    "dice": dice,
    "bce_dice": bce_dice,
    "ce": ce,
    "ce_dice": ce_dice,
}


def get_loss(name: str, heads: int = 1, channels: int = 1):
    """The loss by name. With heads > 1 (deep supervision) a training forward returns `heads`
    blocks of `channels` logits concatenated on the channel axis and the loss is their mean; in
    eval mode the model returns only its last head, which is scored as usual."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss '{name}'; valid: {', '.join(LOSSES)}")
    fn = LOSSES[name]
    if heads == 1:
        return fn

    def deep(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] == heads * channels:
            return torch.stack([fn(c, target) for c in logits.split(channels, dim=1)]).mean()
        return fn(logits, target)

    deep.__name__ = f"{name}_deep_supervision"
    return deep
