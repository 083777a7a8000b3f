"""Building blocks shared by the UNet family, with the knobs the reference reports differ in.

Knobs (all plain arguments): padding_mode 'zeros' | 'reflect'; activation 'relu' | 'leaky_relu';
dropout (after each double conv, 0 = none); downsample 'maxpool' | 'strided_conv'; upsample
'bilinear' | 'nearest' | 'transpose'. Every knob is a required argument here: the defaults (the classic
UNet's) are written once, in harness.config.catalog.
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


def conv_bn_act(c_in: int, c_out: int, *, padding_mode: str, activation: str, stride: int = 1) -> list[nn.Module]:
    _choice("padding_mode", padding_mode, PADDING_MODES)
    _choice("activation", activation, ACTIVATIONS)
    return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False, padding_mode=padding_mode),
            nn.BatchNorm2d(c_out), ACTIVATIONS[activation]()]


class DoubleConv(nn.Sequential):
    """(conv3x3 -> BN -> act) x 2, then optional Dropout2d. (N, c_in, H, W) -> (N, c_out, H, W)."""

    def __init__(self, c_in: int, c_out: int, c_mid: int | None = None, *, padding_mode: str, activation: str,
                 dropout: float):
        c_mid = c_mid or c_out
        layers = [*conv_bn_act(c_in, c_mid, padding_mode=padding_mode, activation=activation),
                  *conv_bn_act(c_mid, c_out, padding_mode=padding_mode, activation=activation)]
        if dropout:
            layers.append(nn.Dropout2d(dropout))
        super().__init__(*layers)


def downsample_layer(kind: str, channels: int, *, padding_mode: str, activation: str) -> nn.Module:
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

    def __init__(self, c_in: int, mode: str):
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
        return interpolate(x, tuple(size), self.mode)


# Devices whose autocast lists upsample_* as float32 ops (CUDA's AT_FORALL_FP32, which XPU shares).
# CPU autocast keeps them in the input's dtype already, so CPU runs are untouched.
AUTOCAST_UPCASTS_RESIZE = ("cuda", "xpu")


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def interpolate(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """(N, c, h, w) -> (N, c, *size), 'bilinear' (align_corners=False) or 'nearest'.

    Under CUDA autocast a bf16 map would be cast up to float32, interpolated at twice the bytes,
    joined to the bf16 skip by the slow mixed-dtype `cat`, and cast back to bf16 by the next
    conv (on an H200 the upsample and the `cat` alone took a fifth of a ResNet34-UNet step's
    kernel time, with more in the casts). Here the forward runs in x's dtype instead. The kernel
    accumulates in float32 and rounds once, the same rounding the conv applied to the float32
    map, so the conv sees the same values; the backward stays in float32, as autocast had it
    (see _LowPrecisionResize).
    """
    if (x.dtype in (torch.bfloat16, torch.float16) and x.device.type in AUTOCAST_UPCASTS_RESIZE
            and torch.is_autocast_enabled(x.device.type)):
        return _LowPrecisionResize.apply(x, size, mode)
    return _resize(x, size, mode)


class _LowPrecisionResize(torch.autograd.Function):
    """Forward: interpolate in x's own low-precision dtype, outside autocast. Backward: the
    float32 adjoint, rounded once to x's dtype, which is what autocast's float32 op and its
    casts gave (the bf16 backward kernels accumulate with atomics in bf16, so are not used)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
        ctx.input_size, ctx.size, ctx.mode, ctx.dtype = tuple(x.shape), size, mode, x.dtype
        with torch.autocast(x.device.type, enabled=False):
            return _resize(x, size, mode)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.float()
        if ctx.mode == "nearest":
            g = torch.ops.aten.upsample_nearest2d_backward(grad, ctx.size, ctx.input_size)
        else:
            g = torch.ops.aten.upsample_bilinear2d_backward(grad, ctx.size, ctx.input_size, False)
        return g.to(ctx.dtype), None, None


class Up(nn.Module):
    """Upsample `x` to the skip's size, concatenate, DoubleConv.

    x: (N, c_in, h, w); skip: (N, c_skip, H, W) with H ~ 2h -> (N, c_out, H, W). Inputs of any
    H and W work: the upsampled map is resized or padded to the skip's size.
    """

    def __init__(self, c_in: int, c_skip: int, c_out: int, mode: str, **conv):
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
