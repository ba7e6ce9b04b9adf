"""Log-spaced continuous position bias (CPB) of Swin Transformer V2.

For a window of ``wh x ww`` tokens the relative offsets (dy, dx) span ``[-(w-1), w-1]`` per axis.
Each offset is normalised by ``pretrained_window - 1`` when the weights were pretrained with a
different window (so the MLP sees the coordinates it was trained on), else by ``window - 1``,
multiplied by 8 and log-spaced: ``sign(d) * log2(|d| + 1) / log2(8)`` — the official formula
(which differs from the paper's natural log). A small MLP (2 -> hidden -> heads) maps each offset
to a per-head bias, squashed to ``16 * sigmoid``.
"""
import math
from functools import lru_cache
from typing import Tuple

import torch
import torch.nn as nn

Size2 = Tuple[int, int]

#: Upper bound of the bias: 16 * sigmoid(.).
BIAS_RANGE = 16.0


def relative_coords_table(window: Size2, pretrained_window: Size2,
                          device: torch.device) -> torch.Tensor:
    """Log-spaced offsets ``(2wh-1, 2ww-1, 2)`` fed to the CPB MLP (cached, read-only)."""
    return _coords_table(tuple(window), tuple(pretrained_window), str(device))


def relative_position_index(window: Size2, device: torch.device) -> torch.Tensor:
    """``(N, N)`` index into the flattened coordinate table for every token pair of a window."""
    return _position_index(tuple(window), str(device))


@lru_cache(maxsize=64)
def _coords_table(window: Size2, pretrained_window: Size2, device: str) -> torch.Tensor:
    axes = []
    for size, pretrained in zip(window, pretrained_window):
        offsets = torch.arange(-(size - 1), size, dtype=torch.float32)
        scale = pretrained - 1 if pretrained > 0 else size - 1
        # A window of one token has the single offset 0: nothing to normalise.
        axes.append(offsets / max(scale, 1) * 8)
    table = torch.stack(torch.meshgrid(*axes, indexing='ij'), dim=-1)
    table = torch.sign(table) * torch.log2(table.abs() + 1.0) / math.log2(8)
    return table.to(device)


@lru_cache(maxsize=64)
def _position_index(window: Size2, device: str) -> torch.Tensor:
    wh, ww = window
    coords = torch.stack(torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing='ij'))
    coords = coords.flatten(1)  # (2, N)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # (N, N, 2)
    relative[..., 0] += wh - 1
    relative[..., 1] += ww - 1
    index = relative[..., 0] * (2 * ww - 1) + relative[..., 1]
    return index.to(device)


def continuous_position_bias(cpb_mlp: nn.Module, window: Size2, pretrained_window: Size2,
                             num_heads: int) -> torch.Tensor:
    """The ``(num_heads, N, N)`` bias that ``cpb_mlp`` assigns to a window's token pairs."""
    device = next(cpb_mlp.parameters()).device
    table = relative_coords_table(window, pretrained_window, device)
    index = relative_position_index(window, device)
    bias_table = cpb_mlp(table.to(cpb_mlp[0].weight.dtype)).view(-1, num_heads)
    bias = bias_table[index.view(-1)].view(*index.shape, num_heads)
    return BIAS_RANGE * torch.sigmoid(bias.permute(2, 0, 1))
