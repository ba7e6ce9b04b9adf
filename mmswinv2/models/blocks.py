"""Swin Transformer V2 building blocks on channels-last maps ``(B, H, W, C)``."""
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.utils.checkpoint as checkpoint

from .attention import WindowAttentionV2
from .lean_autograd import gelu_linear
from .windows import (pad_to_multiple, shift_mask, window_and_shift, window_partition,
                      window_reverse)


class DropPath(nn.Module):
    """Stochastic depth: zero a residual branch for a random subset of samples (training only),
    rescaling the kept ones by ``1 / (1 - drop_prob)``."""

    def __init__(self, drop_prob: float = 0.):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.:
            return x
        keep = 1.0 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return x * x.new_empty(shape).bernoulli_(keep).div_(keep)

    def extra_repr(self) -> str:
        return f'drop_prob={self.drop_prob}'


class Mlp(nn.Module):
    """fc1 -> GELU -> dropout -> fc2 -> dropout. Without dropout, GELU and fc2 run as
    :func:`.lean_autograd.gelu_linear`, which recomputes GELU in backward."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.drop.p:
            return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))
        return gelu_linear(self.fc1(x), self.fc2.weight, self.fc2.bias)


class SwinBlockV2(nn.Module):
    """Residual-post-norm block: ``x + DP(LN(attn(x)))``, then ``x + DP(LN(mlp(x)))``,
    optionally followed by a main-branch LayerNorm ``norm3`` (SwinV2-H/G every 6 blocks,
    timm cr at stage ends).

    Odd blocks of a stage use shifted windows. The window and shift are chosen per forward from
    the map (:func:`.windows.window_and_shift`), and the map is zero-padded at the bottom and
    right to whole windows, rolled, attended, rolled back and cropped: any ``H x W`` works.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, shifted: bool,
                 pretrained_window_size: int = 0, mlp_ratio: float = 4., qkv_bias: bool = True,
                 drop: float = 0., attn_drop: float = 0., drop_path: float = 0.,
                 extra_norm: bool = False, attn_cfg: Optional[dict] = None):
        super().__init__()
        self.window_size = window_size
        self.shifted = shifted
        self.attn = WindowAttentionV2(dim, num_heads, pretrained_window_size, qkv_bias,
                                      attn_drop=attn_drop, proj_drop=drop, **(attn_cfg or {}))
        self.norm1 = nn.LayerNorm(dim)
        self.drop_path = DropPath(drop_path)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim) if extra_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[1:3]
        window, shift = window_and_shift((H, W), self.window_size, self.shifted)
        shifted = pad_to_multiple(x, window)
        padded_hw = shifted.shape[1:3]
        if any(shift):
            shifted = torch.roll(shifted, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        mask = shift_mask(padded_hw, window, shift, x.device)
        attended = self.attn(window_partition(shifted, window), window, mask)
        attended = window_reverse(attended, window, padded_hw)
        if any(shift):
            attended = torch.roll(attended, shifts=shift, dims=(1, 2))
        x = x + self.drop_path(self.norm1(attended[:, :H, :W]))
        x = x + self.drop_path(self.norm2(self.mlp(x)))
        return self.norm3(x) if self.norm3 is not None else x


class PatchMergingV2(nn.Module):
    """2x2 patch merging of Swin V2: concatenate each 2x2 neighbourhood (official order:
    (0,0), (1,0), (0,1), (1,1)), reduce 4C -> 2C, then LayerNorm(2C). With ``norm_first`` the
    LayerNorm(4C) comes before the reduction (Swin V1, timm cr). Odd sizes are zero-padded at
    the bottom and right, so ``H x W`` becomes ``ceil(H/2) x ceil(W/2)``."""

    def __init__(self, dim: int, norm_first: bool = False):
        super().__init__()
        self.norm_first = norm_first
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim if norm_first else 2 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_to_multiple(x, (2, 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]],
                      dim=-1)
        if self.norm_first:
            return self.reduction(self.norm(x))
        return self.norm(self.reduction(x))


class SwinStageV2(nn.Module):
    """Optional 2x downsampling (at the stage start) followed by ``depth`` blocks; blocks
    1, 3, ... use shifted windows. ``with_cp``: recompute each block in backward (activation
    checkpointing). ``extra_norms``: one bool per block, a main-branch ``norm3`` after it.
    ``attn_cfg``: further :class:`.attention.WindowAttentionV2` options."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int,
                 pretrained_window_size: int = 0, downsample: bool = False,
                 mlp_ratio: float = 4., qkv_bias: bool = True, drop: float = 0.,
                 attn_drop: float = 0., drop_path: Optional[Sequence[float]] = None,
                 with_cp: bool = False, extra_norms: Optional[Sequence[bool]] = None,
                 merge_norm_first: bool = False, attn_cfg: Optional[dict] = None):
        super().__init__()
        drop_path = drop_path if drop_path is not None else [0.] * depth
        extra_norms = extra_norms if extra_norms is not None else [False] * depth
        self.with_cp = with_cp
        self.downsample = PatchMergingV2(dim // 2, merge_norm_first) if downsample else None
        self.blocks = nn.ModuleList([
            SwinBlockV2(dim, num_heads, window_size, shifted=bool(i % 2),
                        pretrained_window_size=pretrained_window_size, mlp_ratio=mlp_ratio,
                        qkv_bias=qkv_bias, drop=drop, attn_drop=attn_drop,
                        drop_path=drop_path[i], extra_norm=extra_norms[i], attn_cfg=attn_cfg)
            for i in range(depth)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            x = self.downsample(x)
        for block in self.blocks:
            if self.with_cp and x.requires_grad:
                x = checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x
