"""Segmentation models. Each architecture is one file here plus one entry in
`harness.config.catalog.ARCHS`; `harness.build.create_model('unet', ...)` builds one by name.

Every model maps a float image batch in [0, 1], shape (N, 3, H, W), to logits
(N, out_channels, H, W) for any H and W: out_channels is 1 for binary segmentation (sigmoid)
and K for K classes (softmax). ImageNet normalisation happens inside the model (on the device,
once per batch), so a logged model needs no preprocessing beyond scaling pixels to [0, 1].
Which knobs each architecture takes, and their defaults, are declared in the catalog;
constructors take them as keyword arguments with no defaults of their own.
"""

from __future__ import annotations

import torch
from torch import nn

from harness.models.resnet_unet import WeightsUnavailable

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Segmenter(nn.Module):
    """Normalise with ImageNet statistics, then run `net`. (N, 3, H, W) in [0, 1] -> logits."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["Segmenter", "WeightsUnavailable", "count_parameters"]
