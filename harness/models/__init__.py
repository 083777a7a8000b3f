"""Model registry: build segmentation models by short name, as `create_model('unet', ...)`.

Every model maps a float image batch in [0, 1], shape (N, 3, H, W), to logits
(N, out_channels, H, W) for any H and W: out_channels is 1 for binary segmentation (sigmoid)
and K for K classes (softmax). ImageNet normalisation happens inside the model (on the device,
once per batch), so a logged model needs no preprocessing beyond scaling pixels to [0, 1].
Which knobs each architecture takes is declared in harness.archs.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from harness.config.catalog import ARCH_KNOBS, DEFAULTS, check_knobs
from harness.models.resnet_unet import ResNet34UNet, WeightsUnavailable
from harness.models.unet import UNet
from harness.models.unet_plus_plus import UNetPlusPlus

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


def _conv(k: dict) -> dict:
    return {"padding_mode": k["padding_mode"], "activation": k["activation"], "dropout": k["dropout"]}


MODELS: dict[str, Callable[..., nn.Module]] = {
    "unet": lambda out, k: UNet(out_channels=out, base_width=k["base_width"], upsample=k["upsample"],
                                downsample_mode=k["downsample"], grad_checkpointing=k["grad_checkpointing"], **_conv(k)),
    "unet_plus_plus": lambda out, k: UNetPlusPlus(out_channels=out, base_width=k["base_width"], upsample=k["upsample"],
                                                  downsample_mode=k["downsample"], deep_supervision=k["deep_supervision"],
                                                  grad_checkpointing=k["grad_checkpointing"], **_conv(k)),
    "resnet34_unet": lambda out, k: ResNet34UNet(out_channels=out, encoder_weights=k["encoder_weights"],
                                                 upsample=k["upsample"], decoder_widths=k["decoder_widths"],
                                                 grad_checkpointing=k["grad_checkpointing"], **_conv(k)),
}
assert set(MODELS) == set(ARCH_KNOBS)


def list_models() -> list[str]:
    return sorted(MODELS)


def create_model(arch: str, *, out_channels: int = 1, base_width: int = 64, grad_checkpointing: bool = False,
                 **knobs) -> Segmenter:
    """Build a registered model with knobs (see harness.archs; unknown names raise ValueError
    listing the valid ones, and a knob the architecture does not take raises too)."""
    if arch not in MODELS:
        raise ValueError(f"unknown model '{arch}'; valid: {', '.join(list_models())}")
    unknown = set(knobs) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown model knob(s) {sorted(unknown)}; valid: {', '.join(DEFAULTS)}")
    check_knobs(arch, knobs)
    values = {**DEFAULTS, **knobs, "base_width": base_width, "grad_checkpointing": grad_checkpointing}
    return Segmenter(MODELS[arch](out_channels, values))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["MODELS", "Segmenter", "WeightsUnavailable", "count_parameters", "create_model", "list_models"]
