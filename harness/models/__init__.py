"""Model registry: build segmentation models by short name, as `create_model('unet', ...)`.

Every model maps a float image batch in [0, 1], shape (N, 3, H, W), to logits (N, 1, H, W) for
any H and W. ImageNet normalisation happens inside the model (on the device, once per batch),
so a logged model needs no preprocessing beyond scaling pixels to [0, 1].
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from harness.models.resnet_unet import ResNet34UNet, WeightsUnavailable
from harness.models.unet import UNet

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


def _unet(upsample: str, base_width: int, encoder_weights: str) -> nn.Module:
    if encoder_weights != "none":
        raise ValueError("model.encoder_weights applies to resnet34_unet only; unet has no pretrained encoder")
    return UNet(base_width=base_width, upsample=upsample)


def _resnet34_unet(upsample: str, base_width: int, encoder_weights: str) -> nn.Module:
    del base_width  # the encoder fixes the widths; base_width is a UNet knob
    return ResNet34UNet(encoder_weights=encoder_weights, upsample=upsample)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "unet": _unet,
    "resnet34_unet": _resnet34_unet,
}


def list_models() -> list[str]:
    return sorted(MODELS)


def create_model(arch: str, *, upsample: str = "bilinear", base_width: int = 64,
                 encoder_weights: str = "none") -> Segmenter:
    """Build a registered model. Unknown names raise ValueError listing the valid ones."""
    if arch not in MODELS:
        raise ValueError(f"unknown model '{arch}'; valid: {', '.join(list_models())}")
    return Segmenter(MODELS[arch](upsample=upsample, base_width=base_width, encoder_weights=encoder_weights))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["MODELS", "Segmenter", "WeightsUnavailable", "count_parameters", "create_model", "list_models"]
