"""Swin Transformer V2 building blocks on channels-last maps ``(B, H, W, C)``."""
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn
import torch.utils.checkpoint as checkpoint

from .attention import PIECE_BYTES, WindowAttentionV2, assemble, spans
from .lean_autograd import eager_cpu_inference, gelu_linear
from .onednn import linear, linear_gelu
from .windows import WindowLayout, pad_to_multiple


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
    """fc1 -> GELU -> dropout -> fc2 -> dropout. Without dropout: in training GELU and fc2 run
    as one :func:`.lean_autograd.gelu_linear`, which recomputes GELU in backward rather than
    keep its output; in CPU inference fc1 and GELU run as :func:`.onednn.linear_gelu` (and fc2
    as :func:`.onednn.linear`), on pieces of the tokens with about ``PIECE_BYTES`` of hidden
    activation each."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, residual_norm: Optional[Callable] = None,
                in_place: bool = False) -> torch.Tensor:
        """``mlp(x)``, or with ``residual_norm`` ``x + residual_norm(mlp(x))`` (a block's
        residual branch; in CPU inference each piece as it is made, see
        :func:`.attention.assemble`, and with ``in_place`` written over ``x``, which the
        caller gives up, where the types allow)."""
        if self.training and self.drop.p:
            out = self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))
        elif torch.is_grad_enabled():
            out = gelu_linear(self.fc1(x), self.fc2.weight, self.fc2.bias)
        else:
            tokens = x.reshape(-1, x.shape[-1])
            # CPU inference: the (tokens, hidden) activation in pieces the allocator serves
            # from memory it keeps, rather than faulted in afresh (see
            # WindowAttentionV2._inference_pieces); elsewhere one piece
            step = max(1, PIECE_BYTES // (4 * self.fc1.out_features)) \
                if eager_cpu_inference(x) else len(tokens)
            out = assemble(tokens, spans(len(tokens), step),
                           lambda start, stop: self._inference(tokens[start:stop]),
                           residual_norm, in_place)
            return out.view(*x.shape[:-1], out.shape[-1])
        return out if residual_norm is None else x + residual_norm(out)

    def _inference(self, x: torch.Tensor) -> torch.Tensor:
        """fc2(GELU(fc1(x))), each layer one oneDNN call where it applies (see .onednn)."""
        hidden = linear_gelu(x, self.fc1.weight, self.fc1.bias)
        return linear(hidden, self.fc2.weight, self.fc2.bias)


class SwinBlockV2(nn.Module):
    """Residual-post-norm block: ``x + DP(LN(attn(x)))`` then ``x + DP(LN(mlp(x)))``, optionally
    followed by a main-branch LayerNorm ``norm3`` (``extra_norm``; SwinV2-H/G every 6 blocks,
    timm cr at stage ends).

    Odd blocks of a stage use shifted windows. The window and shift are chosen per forward from
    the map size (:func:`.windows.window_and_shift`); the map is zero-padded at the bottom/right to
    a window multiple, rolled, attended, rolled back and cropped, so any ``H x W`` works (each way
    in one gather, :class:`.windows.WindowLayout`).
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
        layout = WindowLayout(x.shape[1:3], self.window_size, self.shifted, x.device)
        if not self.training and eager_cpu_inference(x, self.norm1.weight):
            # CPU inference: each branch's norm and residual add on its pieces as they are
            # made (the attention's in window order: partition commutes with both; the
            # padding tokens it adds are dropped by the reverse), written over the fresh
            # gathers into and out of windows: no new map-sized output per branch, whose pages
            # would be faulted in afresh (AMD EPYC, A/B in one process: 1.02x at 8 x 256² fp32,
            # 1.04x at 800x1344 bf16; page faults per forward -20 to -40 %)
            windows = self.attn(layout.partition(x), layout.window, layout.mask,
                                residual_norm=self.norm1, in_place=True)
            x = self.mlp(layout.reverse(windows), residual_norm=self.norm2, in_place=True)
        else:
            attended = self.attn(layout.partition(x), layout.window, layout.mask)
            x = x + self.drop_path(self.norm1(layout.reverse(attended)))
            x = x + self.drop_path(self.norm2(self.mlp(x)))
        return self.norm3(x) if self.norm3 is not None else x


class PatchMergingV2(nn.Module):
    """2x2 patch merging of Swin V2: concatenate each 2x2 neighbourhood (official order:
    (0,0), (1,0), (0,1), (1,1)), reduce 4C -> 2C, then LayerNorm(2C). With ``norm_first`` the
    LayerNorm(4C) comes before the reduction instead (Swin V1 and timm cr).
    Odd sizes are zero-padded at the bottom/right, so ``H x W`` becomes ``ceil(H/2) x ceil(W/2)``.
    """

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
            return linear(self.norm(x), self.reduction.weight, None)
        return self.norm(linear(x, self.reduction.weight, None))


class SwinStageV2(nn.Module):
    """Optional 2x downsampling (at the stage start) followed by ``depth`` blocks.

    Args:
        dim: channels inside the stage (after downsampling).
        depth: number of blocks; blocks 1, 3, ... use shifted windows.
        downsample: merge 2x2 patches of a ``dim // 2``-channel input first.
        drop_path: one rate per block.
        with_cp: recompute each block in backward (activation checkpointing) to save memory.
        extra_norms: one bool per block: follow it with a main-branch LayerNorm ``norm3``.
        merge_norm_first: see :class:`PatchMergingV2` (``norm_first``).
        attn_cfg: extra :class:`.attention.WindowAttentionV2` options (``fused``, ``cpb_*``).
    """

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
