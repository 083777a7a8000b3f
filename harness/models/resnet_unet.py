"""ResNet34-UNet: torchvision's resnet34 as the encoder, a UNet decoder fed by each stage."""

from __future__ import annotations

import pickle

import torch
from torch import nn
from torchvision.models import ResNet34_Weights, resnet34

from harness.models.blocks import Up, run_block


class WeightsUnavailable(RuntimeError):
    """Pretrained weights were asked for and could not be used: offline with no cache, or a weights
    file that is missing or does not hold a torchvision resnet34 state dict (the message says which)."""


def _encoder(weights: str) -> nn.Module:
    """torchvision's resnet34: random (`none`), ImageNet through the torch hub cache (`imagenet`), or
    the state dict in the file `weights` (.pth / .pt)."""
    if weights == "none":
        return resnet34(weights=None)
    if weights != "imagenet":
        return _from_file(weights)
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


def _from_file(path: str) -> nn.Module:
    """resnet34 with the state dict in `path` ({'state_dict': ...} or {'model': ...} wrappers are
    unwrapped). Keys and shapes must match torchvision's resnet34; the classifier (fc.*), which the
    UNet does not use, may be absent. The first mismatch is named."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, pickle.UnpicklingError, EOFError) as err:
        # torch's own message advises weights_only=False or allowlisting globals, i.e. unpickling the file:
        # never suggest that for a file one did not write; keep only what was wrong with it.
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        found = [line.split("error:", 1)[1].split(". ")[0].strip() for line in lines
                 if "WeightsUnpickler error:" in line]
        why = next((w for w in found if w), lines[0] if lines and "weights_only" not in lines[0] else "unreadable")
        raise WeightsUnavailable(f"model.encoder_weights={path}: not a state dict loadable with weights_only=True "
                                 f"({why})") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    net = resnet34(weights=None)
    expected = net.state_dict()
    if not isinstance(state, dict):
        raise WeightsUnavailable(f"model.encoder_weights={path}: holds a {type(state).__name__}, not a state dict")
    problems = [f"unexpected key '{k}'" for k in state if k not in expected]
    problems += [f"missing key '{k}'" for k in expected if k not in state and not k.startswith("fc.")]
    problems += [f"'{k}' has shape {list(v.shape)}, resnet34 needs {list(expected[k].shape)}"
                 for k, v in state.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    if problems:
        raise WeightsUnavailable(f"model.encoder_weights={path}: not a torchvision resnet34 state dict: "
                                 f"{problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    net.load_state_dict(state, strict=False)
    return net


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
