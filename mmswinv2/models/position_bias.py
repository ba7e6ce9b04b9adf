"""Log-spaced continuous position bias (CPB) of Swin Transformer V2.

For a window of ``wh x ww`` tokens the relative offsets (dy, dx) span ``[-(w-1), w-1]`` per axis.
Two coordinate transforms exist:

- ``'normalized_log2'`` (official, HF, timm ``swinv2``, mmpretrain): each offset is normalised
  by ``pretrained_window - 1`` when the weights were pretrained with a different window (so the
  MLP sees the coordinates it was trained on), else by ``window - 1``, multiplied by 8 and
  log-spaced: ``sign(d) * log2(|d| + 1) / log2(8)`` (this differs from the paper's natural log).
- ``'log'`` (timm ``swinv2_cr``, the paper): ``sign(d) * ln(1 + |d|)``, not normalised.

A small MLP (2 -> hidden -> heads) maps each offset to a per-head bias; the official model
bounds it to ``16 * sigmoid(.)``, timm's cr uses it as it is.
"""
import functools
import math
from typing import Tuple

import torch
import torch.nn as nn

Size2 = Tuple[int, int]

#: Upper bound of the bias: 16 * sigmoid(.).
BIAS_RANGE = 16.0


COORDS = ('normalized_log2', 'log')


def relative_coords_table(window: Size2, pretrained_window: Size2, device: torch.device,
                          coords: str = 'normalized_log2') -> torch.Tensor:
    """Log-spaced offsets ``(2wh-1, 2ww-1, 2)`` fed to the CPB MLP (cached, read-only)."""
    table = uncached_when_compiling(_coords_table)
    return table(tuple(window), tuple(pretrained_window), str(device), coords)


def relative_position_index(window: Size2, device: torch.device) -> torch.Tensor:
    """``(N, N)`` index into the flattened coordinate table for every token pair of a window."""
    return uncached_when_compiling(_position_index)(tuple(window), str(device))


def constant_cache(maxsize: int):
    """``functools.lru_cache`` for functions that make constant tensors, made outside inference
    mode: the first call may come from a forward under ``torch.inference_mode()``, and an
    inference tensor cannot be saved for backward by a later forward that autograd records."""
    def decorate(function):
        @functools.wraps(function)
        def outside_inference_mode(*args):
            with torch.inference_mode(False):
                return function(*args)
        cached = functools.lru_cache(maxsize)(outside_inference_mode)
        cached.__wrapped__ = function  # what uncached_when_compiling calls
        return cached
    return decorate


def uncached_when_compiling(cached):
    """``cached`` (a :func:`constant_cache`), or the function it wraps while ``torch.compile``
    traces: the traced graph computes the (small) tensor itself instead of Dynamo ignoring the
    cache with a warning."""
    return cached.__wrapped__ if torch.compiler.is_compiling() else cached


@constant_cache(maxsize=64)
def _coords_table(window: Size2, pretrained_window: Size2, device: str,
                  coords: str) -> torch.Tensor:
    axes = []
    for size, pretrained in zip(window, pretrained_window):
        offsets = torch.arange(-(size - 1), size, dtype=torch.float32)
        if coords == 'normalized_log2':
            scale = pretrained - 1 if pretrained > 0 else size - 1
            # A window of one token has the single offset 0: nothing to normalise.
            offsets = offsets / max(scale, 1) * 8
        axes.append(offsets)
    table = torch.stack(torch.meshgrid(*axes, indexing='ij'), dim=-1)
    if coords == 'normalized_log2':
        table = torch.sign(table) * torch.log2(table.abs() + 1.0) / math.log2(8)
    else:
        table = torch.sign(table) * torch.log1p(table.abs())
    return table.to(device)


@constant_cache(maxsize=64)
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
                             num_heads: int, coords: str = 'normalized_log2',
                             bounded: bool = True) -> torch.Tensor:
    """The ``(num_heads, N, N)`` bias that ``cpb_mlp`` assigns to a window's token pairs:
    ``16 * sigmoid(mlp(offset))`` when ``bounded`` (official), else ``mlp(offset)`` (cr)."""
    device = next(cpb_mlp.parameters()).device
    table = relative_coords_table(window, pretrained_window, device, coords)
    index = relative_position_index(window, device)
    bias_table = cpb_mlp(table.to(cpb_mlp[0].weight.dtype)).view(-1, num_heads)
    # Gathered from a heads-first copy of the table. The backward of a gather from the
    # (offsets, heads) table itself is a scatter-add whose CPU code Inductor (torch 2.13) tiles
    # over both dimensions and then indexes wrongly when it runs on several threads: the head
    # offset counted twice (pytorch/pytorch#191837), so gradients land in the wrong entries and
    # past the end of the buffer (found with AddressSanitizer; training aborted with "double
    # free or corruption"). Heads-first, the scatter runs along contiguous rows.
    bias = bias_table.t().contiguous()[:, index.view(-1)].view(num_heads, *index.shape)
    return BIAS_RANGE * torch.sigmoid(bias) if bounded else bias
