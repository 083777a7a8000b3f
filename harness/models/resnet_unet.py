"""ResNet34-UNet: torchvision's resnet34 as the encoder, a UNet decoder fed by each stage."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import ResNet34_Weights, resnet34

from harness.models.blocks import DoubleConv, Up


class WeightsUnavailable(RuntimeError):
    """Pretrained weights were asked for and could not be obtained (offline, no cache)."""


def _encoder(weights: str) -> nn.Module:
    if weights == "none":
        return resnet34(weights=None)
    if weights != "imagenet":
        raise ValueError(f"unknown encoder_weights '{weights}'; valid: none, imagenet")
    try:
        return resnet34(weights=ResNet34_Weights.IMAGENET1K_V1)
    except Exception as err:  # URLError, HTTPError, OSError: all mean "not obtainable here"
        url = ResNet34_Weights.IMAGENET1K_V1.url
        raise WeightsUnavailable(
            f"model.encoder_weights=imagenet: could not obtain the ResNet34 ImageNet weights ({err}). "
            f"This machine may be offline. Place {url.rsplit('/', 1)[-1]} in "
            f"$TORCH_HOME/hub/checkpoints (default ~/.cache/torch/hub/checkpoints), "
            f"or set model.encoder_weights=none."
        ) from None


class ResNet34UNet(nn.Module):
    """(N, 3, H, W) normalised image -> (N, 1, H, W) logits, for any H and W.

    Encoder stages (strides 2, 4, 8, 16, 32; channels 64, 64, 128, 256, 512) feed a decoder
    of widths `decoder_widths`; the last decoder block restores full resolution.
    """

    def __init__(self, out_channels: int = 1, encoder_weights: str = "none", upsample: str = "bilinear",
                 decoder_widths: tuple[int, ...] = (256, 128, 64, 32, 16)):
        super().__init__()
        r = _encoder(encoder_weights)
        self.stem = nn.Sequential(r.conv1, r.bn1, r.relu)       # /2, 64
        self.stages = nn.ModuleList([
            nn.Sequential(r.maxpool, r.layer1),                 # /4, 64
            r.layer2,                                           # /8, 128
            r.layer3,                                           # /16, 256
            r.layer4,                                           # /32, 512
        ])
        d = decoder_widths
        skips = (256, 128, 64, 64, 0)
        ins = (512, *d[:-1])
        self.ups = nn.ModuleList(Up(ins[i], skips[i], d[i], upsample) for i in range(5))
        self.head = nn.Conv2d(d[-1], out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        feats = [self.stem(x)]
        for stage in self.stages:
            feats.append(stage(feats[-1]))
        x = feats.pop()
        for up in self.ups[:-1]:
            x = up(x, feats.pop())
        # The last block has no skip; a zero-channel tensor carries the input size to it.
        x = self.ups[-1](x, x.new_empty((x.shape[0], 0, *size)))
        return self.head(x)
