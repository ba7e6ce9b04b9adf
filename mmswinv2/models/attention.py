"""Scaled cosine window attention of Swin Transformer V2."""
import math
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .lean_autograd import scaled_normalize
from .position_bias import COORDS, continuous_position_bias
from .windows import ShiftMask

Size2 = Tuple[int, int]

#: logit_scale is clamped at ln(1 / 0.01): attention temperatures never exceed 100.
MAX_LOGIT_SCALE = math.log(100.0)


class WindowAttentionV2(nn.Module):
    """Multi-head self-attention inside windows, with cosine similarity and a continuous
    position bias (CPB):

    ``softmax(cos(q, k) * exp(min(logit_scale, ln 100)) + 16 * sigmoid(cpb(offsets)) [+ mask]) v``

    The qkv projection has learnable q and v biases and none for k (a k bias is not
    softmax-invariant under cosine attention); ``learnable_k_bias`` and the ``cpb_*`` options
    reproduce timm's ``swinv2_cr`` variant.

    **Precision.** The projections and ``attention @ v`` run in the input's type, or the
    autocast type under ``torch.autocast``. The logits do not: normalising q and k, the scale
    (up to 100), the bias, the mask and the softmax run in fp32 whatever the input type (float64
    for a float64 model). A cosine of bf16 q and k is off by up to ~4e-3, which a scale of 100
    turns into logit errors of ~0.4, enough to move the softmax visibly.

    Args:
        dim: channels of the input tokens.
        num_heads: attention heads; ``dim`` must be divisible by it.
        pretrained_window_size: window the CPB MLP was pretrained with, 0 if none.
        qkv_bias: learn the q and v biases.
        attn_drop: dropout on attention weights (training only).
        proj_drop: dropout after the output projection (training only).
        cpb_hidden: width of the CPB MLP's hidden layer (official 512, timm cr 384).
        fused: ``F.scaled_dot_product_attention`` (True), the explicit official order of
            operations (False), or ``'auto'``: fused on CUDA, where its kernels are faster.
            Both compute the logits in fp32; the fused kernels round differently.
        learnable_k_bias: learn a k bias too (timm cr); stored as ``k_bias``.
        cpb_output_bias: the CPB MLP's output layer has a bias (timm cr).
        cpb_bounded: bound the position bias to ``16 * sigmoid`` (official; timm cr: False).
        cpb_coords: ``'normalized_log2'`` (official) or ``'log'`` (timm cr); see
            :mod:`.position_bias`.
        chunk_windows: attend at most this many windows at a time (the paper's sequential
            self-attention), which bounds the ``(windows, heads, N, N)`` logits at high
            resolution; in training each chunk is recomputed in backward. 0: all at once.
    """

    def __init__(self, dim: int, num_heads: int, pretrained_window_size: int = 0,
                 qkv_bias: bool = True, attn_drop: float = 0., proj_drop: float = 0.,
                 cpb_hidden: int = 512, fused: Union[bool, str] = 'auto',
                 learnable_k_bias: bool = False, cpb_output_bias: bool = False,
                 cpb_bounded: bool = True, cpb_coords: str = 'normalized_log2',
                 chunk_windows: int = 0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'embed dims {dim} are not divisible by num_heads {num_heads}')
        if cpb_coords not in COORDS:
            raise ValueError(f'cpb_coords must be one of {COORDS}, got {cpb_coords!r}')
        self.num_heads = num_heads
        self.pretrained_window_size = pretrained_window_size
        self.fused = fused
        self.chunk_windows = chunk_windows
        self.cpb_coords = cpb_coords
        self.cpb_bounded = cpb_bounded

        self.logit_scale = nn.Parameter(torch.full((num_heads, 1, 1), math.log(10.0)))
        self.cpb_mlp = nn.Sequential(
            nn.Linear(2, cpb_hidden, bias=True),
            nn.ReLU(inplace=True),
            nn.Linear(cpb_hidden, num_heads, bias=cpb_output_bias))
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.k_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias and learnable_k_bias else None
        self.v_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, window: Size2,
                mask: Optional[ShiftMask] = None) -> torch.Tensor:
        """``(B * nW, N, C)`` tokens of windows of ``N = wh * ww`` -> the same shape.
        ``mask``: the shifted-window mask of whole images of windows, or None."""
        bias = self.position_bias(window)
        if not self.chunk_windows or x.shape[0] <= self.chunk_windows:
            return self.attend(x, bias, mask)
        # sequential attention: chunks of windows, each with its own windows' masks
        recompute = self.training and torch.is_grad_enabled()
        outputs = []
        for start in range(0, x.shape[0], self.chunk_windows):
            stop = min(start + self.chunk_windows, x.shape[0])
            masks = mask.windows(start, stop) if mask is not None else None
            if recompute:
                outputs.append(checkpoint(self.attend, x[start:stop], bias, masks,
                                          use_reentrant=False))
            else:
                outputs.append(self.attend(x[start:stop], bias, masks))
        return torch.cat(outputs)

    def attend(self, x: torch.Tensor, bias: torch.Tensor,
               mask: Union[ShiftMask, torch.Tensor, None]) -> torch.Tensor:
        """Attention of windows ``x`` with position ``bias``; ``mask``: a :class:`ShiftMask`
        of whole images, or ``(M, N, N)`` masks repeating over the windows of ``x`` (one
        image's, or one per window), or None."""
        B_, N, C = x.shape
        qkv = F.linear(x, self.qkv.weight, self.qkv_bias())
        q, k, v = qkv.view(B_, N, 3 * self.num_heads, -1).transpose(1, 2).chunk(3, dim=1)
        with torch.autocast(x.device.type, enabled=False):  # the logits in fp32
            dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
            # cos(q, k) * scale, the scale folded into q
            q = scaled_normalize(q.to(dtype).contiguous(), self.temperature(dtype))
            k = scaled_normalize(k.to(dtype).contiguous())
            if self.fused is True or (self.fused == 'auto' and x.is_cuda):
                out = self._fused(q, k, v, bias, mask)
            else:
                attn = q @ k.transpose(-2, -1) + bias
                if isinstance(mask, ShiftMask):
                    mask.add_to(attn)
                elif mask is not None:
                    attn = (attn.view(-1, *mask.shape[:1], *attn.shape[1:])
                            + mask.unsqueeze(1)).view(attn.shape)
                attn = self.attn_drop(attn.softmax(dim=-1))
                out = attn.to(v.dtype) @ v
        out = out.transpose(1, 2).reshape(B_, N, C)
        return self.proj_drop(self.proj(out))

    def _fused(self, q, k, v, bias, mask):
        """``scaled_dot_product_attention`` in the logits' type with bias + mask added."""
        B_, heads, N, d = q.shape
        if mask is not None:  # one (M * heads, N, N) mask for every M windows
            mask = mask.windows(0, mask.num_windows) if isinstance(mask, ShiftMask) else mask
            M = mask.shape[0]
            q, k, v = (t.reshape(-1, M * heads, N, d) for t in (q, k, v))
            bias = (bias + mask.unsqueeze(1)).reshape(1, M * heads, N, N)
        else:  # 4-D: with a 3-D mask the CPU dispatcher falls back to the math kernel
            bias = bias.unsqueeze(0)
        out = F.scaled_dot_product_attention(
            q, k, v.to(q.dtype), attn_mask=bias, scale=1.0,
            dropout_p=self.attn_drop.p if self.training else 0.0)
        return out.reshape(B_, heads, N, d).to(v.dtype)

    def temperature(self, dtype: torch.dtype) -> torch.Tensor:
        """``(heads, 1, 1)``: the factor on the cosines, ``exp(min(logit_scale, ln 100))``."""
        return torch.clamp(self.logit_scale.to(dtype), max=MAX_LOGIT_SCALE).exp()

    def qkv_bias(self) -> Optional[torch.Tensor]:
        """``(3 * dim,)``: q bias, zero (or the learnt) k bias, v bias; None without biases."""
        if self.q_bias is None:
            return None
        k_bias = self.k_bias if self.k_bias is not None else torch.zeros_like(self.v_bias)
        return torch.cat((self.q_bias, k_bias, self.v_bias))

    def position_bias(self, window: Size2) -> torch.Tensor:
        """The ``(heads, N, N)`` fp32 (float64 for a float64 model) bias of a ``window``."""
        weight = self.cpb_mlp[0].weight
        with torch.autocast(weight.device.type, enabled=False):
            bias = continuous_position_bias(
                self.cpb_mlp, window, (self.pretrained_window_size,) * 2, self.num_heads,
                self.cpb_coords, self.cpb_bounded)
        return bias.to(torch.float64 if bias.dtype == torch.float64 else torch.float32)
