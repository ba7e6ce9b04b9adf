"""Scaled cosine window attention of Swin Transformer V2."""
import math
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .position_bias import COORDS, continuous_position_bias
from .windows import ShiftMask

Size2 = Tuple[int, int]

#: logit_scale is clamped at ln(1 / 0.01): attention temperatures never exceed 100.
MAX_LOGIT_SCALE = math.log(100.0)


class WindowAttentionV2(nn.Module):
    """Multi-head self-attention inside windows, with cosine similarity and CPB.

    ``logits = cos(q, k) * exp(min(logit_scale, ln 100)) + 16 * sigmoid(cpb(offsets)) [+ mask]``.
    The qkv projection has a learnable bias for q and v and none for k (``k`` bias is zero, as in
    the official model; a k bias is not softmax-invariant under cosine attention). The
    ``learnable_k_bias`` and ``cpb_*`` options reproduce timm's ``swinv2_cr`` variant.

    Args:
        dim: channels of the input tokens.
        num_heads: attention heads; ``dim`` must be divisible by it.
        pretrained_window_size: window the CPB MLP was pretrained with, 0 if none (see
            :mod:`.position_bias`).
        qkv_bias: learn the q and v biases.
        attn_drop: dropout on attention weights (training only).
        proj_drop: dropout after the output projection (training only).
        cpb_hidden: width of the CPB MLP's hidden layer (official 512, timm cr 384).
        learnable_k_bias: learn a k bias too (timm cr); stored as ``k_bias``.
        cpb_output_bias: the CPB MLP's output layer has a bias (timm cr).
        cpb_bounded: bound the position bias to ``16 * sigmoid`` (official; timm cr: False).
        cpb_coords: ``'normalized_log2'`` (official) or ``'log'`` (timm cr); see
            :mod:`.position_bias`.
        fused: compute attention with ``F.scaled_dot_product_attention`` instead of the explicit
            official order of operations. Both are exact up to rounding; see
            ``docs/benchmarks.md`` for speed and for how far the fused kernels' rounding drifts.
        chunk_windows: attend at most this many windows per call (the paper's "sequential
            self-attention computation"), which bounds the transient ``(windows, heads, N, N)``
            logits at high resolution; 0: all windows in one call. The result is the same. In
            training each chunk is recomputed in backward rather than keeping its attention
            weights (more compute, memory bounded by one chunk).
    """

    def __init__(self, dim: int, num_heads: int, pretrained_window_size: int = 0,
                 qkv_bias: bool = True, attn_drop: float = 0., proj_drop: float = 0.,
                 cpb_hidden: int = 512, fused: bool = False, learnable_k_bias: bool = False,
                 cpb_output_bias: bool = False, cpb_bounded: bool = True,
                 cpb_coords: str = 'normalized_log2', chunk_windows: int = 0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'embed dims {dim} are not divisible by num_heads {num_heads}')
        self.num_heads = num_heads
        self.pretrained_window_size = pretrained_window_size
        self.attn_drop = attn_drop
        self.fused = fused
        self.chunk_windows = chunk_windows
        if cpb_coords not in COORDS:
            raise ValueError(f'cpb_coords must be one of {COORDS}, got {cpb_coords!r}')
        self.cpb_coords = cpb_coords
        self.cpb_bounded = cpb_bounded

        self.logit_scale = nn.Parameter(torch.full((num_heads, 1, 1), math.log(10.0)))
        self.cpb_mlp = nn.Sequential(
            nn.Linear(2, cpb_hidden, bias=True),
            nn.ReLU(inplace=True),
            nn.Linear(cpb_hidden, num_heads, bias=cpb_output_bias))
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = self.v_bias = None
        self.k_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias and learnable_k_bias else None
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, window: Size2,
                mask: Optional[ShiftMask] = None) -> torch.Tensor:
        """Attend within windows.

        Args:
            x: ``(B * nW, N, C)`` tokens of ``nW`` windows of ``N = wh * ww`` tokens each.
            window: ``(wh, ww)``.
            mask: the shifted-window mask of the ``nW`` windows, or None.
        """
        position_bias = continuous_position_bias(  # (heads, N, N), shared by all windows
            self.cpb_mlp, window, (self.pretrained_window_size,) * 2, self.num_heads,
            self.cpb_coords, self.cpb_bounded)
        BnW = x.shape[0]
        if not self.chunk_windows or BnW <= self.chunk_windows:
            return self._attend(x, position_bias, mask)
        # Training: each chunk keeps only its inputs for backward and is recomputed there, so
        # the attention weights of one chunk at a time exist (with with_cp, inside the block's
        # own recomputation too).
        recompute = self.training and torch.is_grad_enabled()
        outputs = []
        for start in range(0, BnW, self.chunk_windows):
            stop = min(start + self.chunk_windows, BnW)
            rows = None if mask is None else mask.windows(start, stop)  # this chunk's masks
            if recompute:
                outputs.append(checkpoint(self._attend, x[start:stop], position_bias, rows,
                                          use_reentrant=False))
            else:
                outputs.append(self._attend(x[start:stop], position_bias, rows))
        return torch.cat(outputs)

    def _attend(self, x: torch.Tensor, position_bias: torch.Tensor,
                mask: Union[ShiftMask, torch.Tensor, None]) -> torch.Tensor:
        """Attention of ``x``'s windows; ``mask``: a :class:`ShiftMask` of whole images, or one
        ``(N, N)`` mask per window of ``x``."""
        BnW, N, C = x.shape
        heads = self.num_heads
        qkv_bias = None
        if self.q_bias is not None:
            k_bias = self.k_bias if self.k_bias is not None else torch.zeros_like(self.v_bias)
            qkv_bias = torch.cat((self.q_bias, k_bias, self.v_bias))
        qkv = F.linear(x, self.qkv.weight, qkv_bias)
        q, k, v = qkv.view(BnW, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4).unbind(0)

        scale = torch.clamp(self.logit_scale, max=MAX_LOGIT_SCALE).exp().to(q.dtype)
        attend = self._fused if self.fused else self._explicit
        out = attend(_unit_length(q), _unit_length(k), v, scale, position_bias.to(q.dtype), mask)
        out = out.transpose(1, 2).reshape(BnW, N, C)
        return self.proj_drop(self.proj(out))

    def _explicit(self, q, k, v, scale, bias, mask):
        """The official order of operations: ``softmax(cos * scale + bias [+ mask]) @ v``."""
        attn = (q @ k.transpose(-2, -1)) * scale + bias
        if isinstance(mask, ShiftMask):
            mask.add_to(attn)  # only the last row and column of windows
        elif mask is not None:
            attn += mask.unsqueeze(1).to(attn.dtype)
        attn = F.dropout(attn.softmax(dim=-1), self.attn_drop, self.training)
        return attn @ v

    def _fused(self, q, k, v, scale, bias, mask):
        """``scaled_dot_product_attention`` with the scale folded into q and bias + mask as the
        additive mask."""
        BnW, heads, N, d = q.shape
        q = q * scale
        if isinstance(mask, ShiftMask):
            # fold the windows into the heads so that one (nW * heads, N, N) mask serves the batch
            nW = mask.num_windows
            q, k, v = (t.reshape(BnW // nW, nW * heads, N, d) for t in (q, k, v))
            bias = (bias.unsqueeze(0) + mask.full().unsqueeze(1).to(bias.dtype)).reshape(
                1, nW * heads, N, N)
        elif mask is not None:
            bias = bias.unsqueeze(0) + mask.unsqueeze(1).to(bias.dtype)  # (BnW, heads, N, N)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, scale=1.0,
            dropout_p=self.attn_drop if self.training else 0.0)
        return out.reshape(BnW, heads, N, d)


def _unit_length(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise the last axis; in fp32 for half types, whose sum of squares can overflow."""
    if x.dtype in (torch.float16, torch.bfloat16):
        return F.normalize(x.float(), dim=-1).to(x.dtype)
    return F.normalize(x, dim=-1)
