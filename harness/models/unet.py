"""UNet (Ronneberger et al. 2015) with BatchNorm: 4 down, bottleneck, 4 up, skip connections."""

from __future__ import annotations

import torch
from torch import nn

from harness.models.blocks import DoubleConv, Up


class UNet(nn.Module):
    """(N, 3, H, W) normalised image -> (N, 1, H, W) logits, for any H and W.

    Widths are base_width * (1, 2, 4, 8, 16). With bilinear upsampling the bottleneck is halved,
    as in the common implementation, so both modes have similar parameter counts.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 1, base_width: int = 64,
                 upsample: str = "bilinear"):
        super().__init__()
        w = [base_width * m for m in (1, 2, 4, 8, 16)]
        factor = 2 if upsample == "bilinear" else 1
        self.inc = DoubleConv(in_channels, w[0])
        self.downs = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), DoubleConv(w[i], w[i + 1] if i < 3 else w[4] // factor))
            for i in range(4)
        )
        if upsample == "transpose":  # ConvTranspose2d halves the channels itself
            ups = [Up(w[4 - i], w[3 - i], w[3 - i], upsample) for i in range(4)]
        else:
            ups = [Up(w[4 - i] // 2, w[3 - i], w[3 - i] // 2 if i < 3 else w[0], upsample) for i in range(4)]
        self.ups = nn.ModuleList(ups)
        self.head = nn.Conv2d(w[0], out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = skips.pop()
        for up in self.ups:
            x = up(x, skips.pop())
        return self.head(x)
