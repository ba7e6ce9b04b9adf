"""Log-spaced continuous position bias (CPB) of Swin Transformer V2.

For a window of ``wh x ww`` tokens the relative offsets (dy, dx) span ``[-(w-1), w-1]`` per axis.
A small MLP (2 -> hidden -> heads) maps each offset to a per-head bias; the official model
bounds it to ``16 * sigmoid(.)``. Two coordinate transforms exist:

- ``'normalized_log2'`` (official, HF, timm ``swinv2``, mmpretrain): each offset is divided by
  ``pretrained_window - 1`` when the weights were pretrained with another window (so the MLP
  sees the coordinates it was trained on), else by ``window - 1``, times 8, then log-spaced:
  ``sign(d) * log2(|d| + 1) / log2(8)`` (the code's form; the paper writes the natural log);
- ``'log'`` (timm ``swinv2_cr``, the paper's formula): ``sign(d) * ln(1 + |d|)``, unnormalised.
"""
import math
from typing import Tuple

import torch
import torch.nn as nn

from .windows import constant_cache

Size2 = Tuple[int, int]

#: Upper bound of the bias: 16 * sigmoid(.).
BIAS_RANGE = 16.0
COORDS = ('normalized_log2', 'log')


@constant_cache
def relative_coords_table(window: Size2, pretrained_window: Size2, device: str,
                          coords: str = 'normalized_log2') -> torch.Tensor:
    """Log-spaced offsets ``(2wh-1, 2ww-1, 2)``, the MLP's input."""
    axes = []
    for size, pretrained in zip(window, pretrained_window):
        offsets = torch.arange(-(size - 1), size, dtype=torch.float32)
        if coords == 'normalized_log2':
            # a window of one token has the single offset 0: nothing to normalise
            offsets = offsets / max(pretrained - 1 if pretrained > 0 else size - 1, 1) * 8
        axes.append(offsets)
    table = torch.stack(torch.meshgrid(*axes, indexing='ij'), dim=-1)
    if coords == 'normalized_log2':
        table = torch.sign(table) * torch.log2(table.abs() + 1.0) / math.log2(8)
    else:
        table = torch.sign(table) * torch.log1p(table.abs())
    return table.to(device)


@constant_cache
def relative_position_index(window: Size2, device: str) -> torch.Tensor:
    """``(N, N)``: for each token pair of a window, its offset's row in the flattened table."""
    wh, ww = window
    coords = torch.stack(torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing='ij'))
    relative = coords.flatten(1)[:, :, None] - coords.flatten(1)[:, None, :]  # (2, N, N)
    return ((relative[0] + wh - 1) * (2 * ww - 1) + relative[1] + ww - 1).to(device)


def continuous_position_bias(cpb_mlp: nn.Module, window: Size2, pretrained_window: Size2,
                             num_heads: int, coords: str = 'normalized_log2',
                             bounded: bool = True) -> torch.Tensor:
    """The ``(num_heads, N, N)`` bias ``cpb_mlp`` gives a window's token pairs:
    ``16 * sigmoid(mlp(offset))`` when ``bounded`` (official), else ``mlp(offset)`` (cr)."""
    weight = cpb_mlp[0].weight
    table = relative_coords_table(tuple(window), tuple(pretrained_window), str(weight.device),
                                  coords)
    index = relative_position_index(tuple(window), str(weight.device))
    bias_table = cpb_mlp(table.to(weight.dtype)).view(-1, num_heads)
    # Gathered from the heads-first table: the backward of a gather from the (offsets, heads)
    # table is a scatter-add that Inductor (torch 2.13) indexes wrongly on several CPU threads
    # (pytorch/pytorch#191837: gradients written past the end of the buffer).
    bias = bias_table.t().contiguous()[:, index.view(-1)].view(num_heads, *index.shape)
    return BIAS_RANGE * torch.sigmoid(bias) if bounded else bias
