"""ResNet34-UNet: torchvision's resnet34 as the encoder, a UNet decoder fed by each stage."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import ResNet34_Weights, resnet34

from harness.models.blocks import Up, run_block


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


DECODER_WIDTHS = (256, 128, 64, 32, 16)


class ResNet34UNet(nn.Module):
    """(N, 3, H, W) normalised image -> (N, out_channels, H, W) logits, for any H and W.

    Encoder stages (strides 2, 4, 8, 16, 32; channels 64, 64, 128, 256, 512) feed a decoder
    of widths `decoder_widths`; the last decoder block restores full resolution. `conv` knobs
    (padding_mode, activation, dropout) apply to the decoder; the encoder is torchvision's.
    """

    def __init__(self, *, out_channels: int, encoder_weights: str, upsample: str,
                 decoder_widths: tuple[int, ...] | None, grad_checkpointing: bool = False, **conv):
        super().__init__()
        r = _encoder(encoder_weights)
        self.recompute = grad_checkpointing
        self.stem = nn.Sequential(r.conv1, r.bn1, r.relu)       # /2, 64
        self.stages = nn.ModuleList([
            nn.Sequential(r.maxpool, r.layer1),                 # /4, 64
            r.layer2,                                           # /8, 128
            r.layer3,                                           # /16, 256
            r.layer4,                                           # /32, 512
        ])
        d = tuple(decoder_widths or DECODER_WIDTHS)
        if len(d) != 5 or min(d) < 1:
            raise ValueError(f"decoder_widths must be 5 positive widths, got {list(d)}")
        skips = (256, 128, 64, 64, 0)
        ins = (512, *d[:-1])
        self.ups = nn.ModuleList(Up(ins[i], skips[i], d[i], upsample, **conv) for i in range(5))
        self.head = nn.Conv2d(d[-1], out_channels, kernel_size=1)

    def encoder_parameters(self):
        """The torchvision ResNet34 part (for encoder_freeze_epochs)."""
        yield from self.stem.parameters()
        yield from self.stages.parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        feats = [run_block(self.stem, x, recompute=self.recompute)]
        for stage in self.stages:
            feats.append(run_block(stage, feats[-1], recompute=self.recompute))
        x = feats.pop()
        for up in self.ups[:-1]:
            x = run_block(up, x, feats.pop(), recompute=self.recompute)
        # The last block has no skip; a zero-channel tensor carries the input size to it.
        x = run_block(self.ups[-1], x, x.new_empty((x.shape[0], 0, *size)), recompute=self.recompute)
        return self.head(x)
