"""UNet (Ronneberger et al. 2015) with BatchNorm: 4 down, bottleneck, 4 up, skip connections."""

from __future__ import annotations

import torch
from torch import nn

from harness.models.blocks import DoubleConv, Up, downsample_layer, run_block


class UNet(nn.Module):
    """(N, 3, H, W) normalised image -> (N, out_channels, H, W) logits, for any H and W.

    Widths are base_width * (1, 2, 4, 8, 16). With interpolation upsampling (bilinear, nearest)
    the bottleneck is halved, as in the common implementation, so every mode has a similar
    parameter count. `conv` knobs (padding_mode, activation, dropout) reach every double conv;
    grad_checkpointing recomputes each encoder and decoder block in the backward pass.
    """

    def __init__(self, *, out_channels: int, base_width: int, upsample: str, downsample: str,
                 grad_checkpointing: bool = False, in_channels: int = 3, **conv):
        super().__init__()
        w = [base_width * m for m in (1, 2, 4, 8, 16)]
        factor = 1 if upsample == "transpose" else 2
        self.recompute = grad_checkpointing
        act = {k: v for k, v in conv.items() if k != "dropout"}
        self.inc = DoubleConv(in_channels, w[0], **conv)
        self.downs = nn.ModuleList(
            nn.Sequential(downsample_layer(downsample, w[i], **act),
                          DoubleConv(w[i], w[i + 1] if i < 3 else w[4] // factor, **conv))
            for i in range(4)
        )
        if upsample == "transpose":  # ConvTranspose2d halves the channels itself
            ups = [Up(w[4 - i], w[3 - i], w[3 - i], upsample, **conv) for i in range(4)]
        else:
            ups = [Up(w[4 - i] // 2, w[3 - i], w[3 - i] // 2 if i < 3 else w[0], upsample, **conv) for i in range(4)]
        self.ups = nn.ModuleList(ups)
        self.head = nn.Conv2d(w[0], out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [run_block(self.inc, x, recompute=self.recompute)]
        for down in self.downs:
            skips.append(run_block(down, skips[-1], recompute=self.recompute))
        x = skips.pop()
        for up in self.ups:
            x = run_block(up, x, skips.pop(), recompute=self.recompute)
        return self.head(x)
