"""UNet++ (Zhou et al. 2018): nested, dense skip pathways between encoder and decoder.

Node X[i][j] (depth i, j convolutions along the skip path) sees every earlier node of its depth
and the upsampled node below: X[i][j] = conv(cat(X[i][0..j-1], up(X[i+1][j-1]))).
"""

from __future__ import annotations

import torch
from torch import nn

from harness.models.blocks import DoubleConv, Upsample, downsample_layer, run_block

DEPTH = 4


class _Node(nn.Module):
    """up(deeper) concatenated after the same-depth nodes, then DoubleConv. -> (N, c_out, H, W)."""

    def __init__(self, c_deeper: int, c_same: int, c_out: int, upsample: str, **conv):
        super().__init__()
        self.up = Upsample(c_deeper, upsample)
        self.conv = DoubleConv(c_same + Upsample.out_channels(c_deeper, upsample), c_out, **conv)

    def forward(self, deeper: torch.Tensor, *same: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([*same, self.up(deeper, same[0].shape[-2:])], dim=1))


class UNetPlusPlus(nn.Module):
    """(N, 3, H, W) normalised image -> (N, out_channels, H, W) logits, for any H and W.

    Widths base_width * (1, 2, 4, 8, 16). With deep_supervision, each of X[0][1..4] has a 1x1
    head; in training mode the forward returns the heads concatenated on the channel axis,
    (N, 4 * out_channels, H, W), for a loss averaged over heads (harness.losses), and in eval
    mode only the last head, (N, out_channels, H, W).
    """

    def __init__(self, *, out_channels: int, base_width: int, upsample: str, downsample: str,
                 deep_supervision: bool, grad_checkpointing: bool = False, in_channels: int = 3, **conv):
        super().__init__()
        w = [base_width * m for m in (1, 2, 4, 8, 16)]
        act = {k: v for k, v in conv.items() if k != "dropout"}
        self.recompute, self.deep_supervision = grad_checkpointing, deep_supervision
        self.inc = DoubleConv(in_channels, w[0], **conv)
        self.downs = nn.ModuleList(nn.Sequential(downsample_layer(downsample, w[i], **act),
                                                 DoubleConv(w[i], w[i + 1], **conv))
                                   for i in range(DEPTH))
        self.nodes = nn.ModuleDict({f"{i}_{j}": _Node(w[i + 1], j * w[i], w[i], upsample, **conv)
                                    for j in range(1, DEPTH + 1) for i in range(DEPTH + 1 - j)})
        self.heads = nn.ModuleList(nn.Conv2d(w[0], out_channels, 1) for _ in range(DEPTH if deep_supervision else 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = [[run_block(self.inc, x, recompute=self.recompute)]]
        for down in self.downs:
            grid.append([run_block(down, grid[-1][0], recompute=self.recompute)])
        for j in range(1, DEPTH + 1):
            for i in range(DEPTH + 1 - j):
                grid[i].append(run_block(self.nodes[f"{i}_{j}"], grid[i + 1][j - 1], *grid[i][:j],
                                         recompute=self.recompute))
        if not self.deep_supervision:
            return self.heads[0](grid[0][DEPTH])
        if not self.training:
            return self.heads[-1](grid[0][DEPTH])
        return torch.cat([head(grid[0][j + 1]) for j, head in enumerate(self.heads)], dim=1)
