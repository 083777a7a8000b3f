"""Decoder building blocks shared by the UNet family."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DoubleConv(nn.Sequential):
    """(conv3x3 -> BN -> ReLU) x 2. (N, c_in, H, W) -> (N, c_out, H, W)."""

    def __init__(self, c_in: int, c_out: int, c_mid: int | None = None):
        c_mid = c_mid or c_out
        super().__init__(
            nn.Conv2d(c_in, c_mid, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_mid, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )


class Up(nn.Module):
    """Upsample `x` to the skip's size, concatenate, DoubleConv.

    x: (N, c_in, h, w); skip: (N, c_skip, H, W) with H ~ 2h -> (N, c_out, H, W).
    Sizes need not be exact multiples: the upsampled map is resized or padded to the skip's
    size, so inputs of any H and W work.
    """

    def __init__(self, c_in: int, c_skip: int, c_out: int, mode: str = "bilinear"):
        super().__init__()
        self.mode = mode
        if mode == "transpose":
            self.up = nn.ConvTranspose2d(c_in, c_in // 2, kernel_size=2, stride=2)
            c_in = c_in // 2
        elif mode != "bilinear":
            raise ValueError(f"unknown upsample mode '{mode}'; valid: bilinear, transpose")
        self.conv = DoubleConv(c_in + c_skip, c_out)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        size = skip.shape[-2:] if skip is not None else (x.shape[-2] * 2, x.shape[-1] * 2)
        if self.mode == "bilinear":
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        else:
            x = self.up(x)
            dh, dw = size[0] - x.shape[-2], size[1] - x.shape[-1]
            if dh or dw:  # odd skip sizes: pad (or crop, if negative) to match
                x = F.pad(x, [dw // 2, dw - dw // 2, dh // 2, dh - dh // 2])
        if skip is not None:
            x = torch.cat([skip, x], dim=1)
        return self.conv(x)
