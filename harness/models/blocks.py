"""Building blocks shared by the UNet family, with the knobs the reference reports differ in.

Knobs (all plain arguments): padding_mode 'zeros' | 'reflect'; activation 'relu' | 'leaky_relu';
dropout (after each double conv, 0 = none); downsample 'maxpool' | 'strided_conv'; upsample
'bilinear' | 'nearest' | 'transpose'. The defaults are the classic UNet.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

PADDING_MODES = ("zeros", "reflect")
ACTIVATIONS = {"relu": lambda: nn.ReLU(inplace=True), "leaky_relu": lambda: nn.LeakyReLU(0.01, inplace=True)}
DOWNSAMPLES = ("maxpool", "strided_conv")
UPSAMPLES = ("bilinear", "nearest", "transpose")


def _choice(name: str, value: str, valid) -> None:
    if value not in valid:
        raise ValueError(f"unknown {name} '{value}'; valid: {', '.join(valid)}")


def conv_bn_act(c_in: int, c_out: int, *, stride: int = 1, padding_mode: str = "zeros",
                activation: str = "relu") -> list[nn.Module]:
    _choice("padding_mode", padding_mode, PADDING_MODES)
    _choice("activation", activation, ACTIVATIONS)
    return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False, padding_mode=padding_mode),
            nn.BatchNorm2d(c_out), ACTIVATIONS[activation]()]


class DoubleConv(nn.Sequential):
    """(conv3x3 -> BN -> act) x 2, then optional Dropout2d. (N, c_in, H, W) -> (N, c_out, H, W)."""

    def __init__(self, c_in: int, c_out: int, c_mid: int | None = None, *, padding_mode: str = "zeros",
                 activation: str = "relu", dropout: float = 0.0):
        c_mid = c_mid or c_out
        layers = [*conv_bn_act(c_in, c_mid, padding_mode=padding_mode, activation=activation),
                  *conv_bn_act(c_mid, c_out, padding_mode=padding_mode, activation=activation)]
        if dropout:
            layers.append(nn.Dropout2d(dropout))
        super().__init__(*layers)


def downsample(kind: str, channels: int, *, padding_mode: str = "zeros", activation: str = "relu") -> nn.Module:
    """Halve H and W: 2x2 max-pool, or a stride-2 3x3 conv (+BN+act) keeping `channels`."""
    _choice("downsample", kind, DOWNSAMPLES)
    if kind == "maxpool":
        return nn.MaxPool2d(2)
    return nn.Sequential(*conv_bn_act(channels, channels, stride=2, padding_mode=padding_mode, activation=activation))


def resize_to(x: torch.Tensor, size) -> torch.Tensor:
    """Pad (or crop, if negative) the last two dims to `size`: odd sizes survive down/up."""
    dh, dw = size[0] - x.shape[-2], size[1] - x.shape[-1]
    if dh or dw:
        x = F.pad(x, [dw // 2, dw - dw // 2, dh // 2, dh - dh // 2])
    return x


class Upsample(nn.Module):
    """(N, c, h, w) -> (N, c_out, H, W) at a given size: interpolation keeps c; 'transpose'
    (ConvTranspose2d k2 s2) halves it. `out_channels(c)` says which."""

    def __init__(self, c_in: int, mode: str = "bilinear"):
        super().__init__()
        _choice("upsample", mode, UPSAMPLES)
        self.mode = mode
        self.up = nn.ConvTranspose2d(c_in, c_in // 2, kernel_size=2, stride=2) if mode == "transpose" else None

    @staticmethod
    def out_channels(c_in: int, mode: str) -> int:
        return c_in // 2 if mode == "transpose" else c_in

    def forward(self, x: torch.Tensor, size) -> torch.Tensor:
        if self.up is not None:
            return resize_to(self.up(x), size)
        if self.mode == "nearest":
            return F.interpolate(x, size=size, mode="nearest")
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class Up(nn.Module):
    """Upsample `x` to the skip's size, concatenate, DoubleConv.

    x: (N, c_in, h, w); skip: (N, c_skip, H, W) with H ~ 2h -> (N, c_out, H, W). Inputs of any
    H and W work: the upsampled map is resized or padded to the skip's size.
    """

    def __init__(self, c_in: int, c_skip: int, c_out: int, mode: str = "bilinear", **conv):
        super().__init__()
        self.up = Upsample(c_in, mode)
        self.conv = DoubleConv(Upsample.out_channels(c_in, mode) + c_skip, c_out, **conv)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        size = skip.shape[-2:] if skip is not None else (x.shape[-2] * 2, x.shape[-1] * 2)
        x = self.up(x, size)
        # A zero-channel skip only carries the size; cat with it would also return a
        # contiguous-format (not channels_last) tensor, which the next conv copies back.
        if skip is not None and skip.shape[1]:
            x = torch.cat([skip, x], dim=1)
        return self.conv(x)


@contextmanager
def _bn_stats_frozen(block: nn.Module):
    """During the backward recompute, BatchNorm must not update its running statistics a second
    time (momentum 0 leaves them as they are); the batch statistics it normalises with are the same."""
    norms = [m for m in block.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum


def run_block(block: nn.Module, *inputs, recompute: bool = False):
    """block(*inputs), or with activation checkpointing: the *block* is the function to recompute
    and the tensors are its inputs (passing the module as an input, as one popular UNet repo
    does, checkpoints nothing). use_reentrant=False handles inputs without grad and kwargs; the
    RNG state is replayed, and BatchNorm statistics are updated once, not twice."""
    if recompute and torch.is_grad_enabled():
        return checkpoint(block, *inputs, use_reentrant=False,
                          context_fn=lambda: (nullcontext(), _bn_stats_frozen(block)))
    return block(*inputs)
