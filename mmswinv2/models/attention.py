"""Scaled cosine window attention of Swin Transformer V2."""
import math
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from . import cpu_kernel
from .lean_autograd import (LOGIT_FLOOR, eager_cpu_inference, floored_softmax,
                            flush_subnormal_gradient, flush_subnormals, raise_to_floor_,
                            records_autograd, scaled_normalize, traced)
from .onednn import linear, matmul
from .position_bias import COORDS, continuous_position_bias
from .windows import ShiftMask

Size2 = Tuple[int, int]

#: logit_scale is clamped at ln(1 / 0.01): attention temperatures never exceed 100.
MAX_LOGIT_SCALE = math.log(100.0)

#: CPU inference attends windows in pieces of at most this many bytes of qkv projection and
#: logits (see :meth:`WindowAttentionV2._inference_pieces`).
PIECE_BYTES = 8 * 2**20


def auto_fused(device_type: str) -> bool:
    """Whether ``fused='auto'`` runs ``scaled_dot_product_attention`` on a device type: on
    CUDA; not on CPU, where its flash kernel measured no faster than the explicit path
    (SwinV2-T's unshifted blocks, Intel Xeon, 2 threads, A/B in one process: the forward 1.01x
    at 8 x 256² and 800x1344 in fp32, 0.99x and 1.01x under bf16 autocast)."""
    return device_type == 'cuda'


class WindowAttentionV2(nn.Module):
    """Multi-head self-attention inside windows, with cosine similarity and CPB.

    ``logits = cos(q, k) * exp(min(logit_scale, ln 100)) + 16 * sigmoid(cpb(offsets)) [+ mask]``.
    The qkv projection has a learnable bias for q and v and none for k (``k`` bias is zero, as in
    the official model; a k bias is not softmax-invariant under cosine attention). The
    ``learnable_k_bias`` and ``cpb_*`` options reproduce timm's ``swinv2_cr`` variant.

    **Precision.** The qkv and output projections and ``attention @ v`` run in the input's
    type, or the autocast type under ``torch.autocast`` (bf16 / fp16). The logits do not: the
    normalisation of q and k, ``q . k`` times the logit scale (up to 100), the position bias,
    the mask and the softmax run in fp32 whatever the input type. A cosine of bf16 q and k is
    off by up to ~4e-3, which a scale of 100 turns into logit errors of ~0.4 — enough to move
    the softmax visibly; in fp32 the logits stay the reference's. The bias MLP also runs in fp32.

    **Reuse in inference.** Outside training, the position bias of a window size and the
    concatenated qkv bias are computed once and reused, until a parameter they come from
    changes (tracked by the parameters' version counters and storage, so ``load_state_dict``,
    an optimizer step or any in-place update invalidates them) or ``train()`` is called. The
    shifted-window mask is three ``(N, N)`` patterns (:class:`.windows.ShiftMask`). In CPU
    inference the windows are attended in pieces of about :data:`PIECE_BYTES` (see
    :meth:`_inference_pieces`), with the same result, and what lies between the qkv and output
    projections runs as one compiled kernel (:mod:`.cpu_kernel`): the same ops in the same
    order and types, one window and head at a time.

    **Subnormal floats (CPU).** Masked pairs get softmax weights of ~e^-100 = 4e-44, below
    fp32's smallest normal number (1.2e-38): subnormal floats, which x86 CPUs handle in
    microcode, in the softmax's exp and in every product with them. Measured on an Intel Xeon:
    at 8 x 256² a shifted block's ``weights @ v`` 15x slower than an unshifted block's and its
    softmax 2.4-5.5x (the fp32 forward 1.2x); at 800x1344, through the attention outputs of
    padded tokens whose region holds only padding, every shifted block's output projection
    19-37x. So on the CPU, fp32 logits are floored at 60 below their row's largest before the
    softmax (:func:`.lean_autograd.floored_softmax`; no weight moves by more than
    ``N e^-60``, 6e-25 for ``N = 64``; in inference only the masked windows, where the
    scales and position bias keep the others' logits within 60 of each other, see
    :meth:`_floor_can_bind`); the fused kernel's weights never leave it, so its
    output's subnormals are set to 0 instead. Training meets them in the backward too: the
    gradients of the logits (``w (g - w . g)`` with ``w`` ~e^-60) and of ``v`` (``w^T g``)
    are often subnormal, so both are set to 0 where they arise (in ``floored_softmax``, and on
    the qkv projection's output gradient; each value moves by at most 1.2e-38). Intel Xeon,
    fp32 training step at 800x1344: without that, stage 3's qkv input gradient ran 8x slower
    than its FLOPs allow; the step 1.18-1.31x faster with both flushed. bf16 products (AMX,
    AVX512-BF16) treat subnormal inputs as zero themselves.

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
        fused: compute attention with ``F.scaled_dot_product_attention`` (in fp32, see
            Precision) instead of the explicit official order of operations; ``'auto'``: on
            CUDA only. Both are exact up to rounding; see ``docs/benchmarks.md`` for speed and
            for how far the fused kernels' rounding drifts.
        chunk_windows: attend at most this many windows per call (the paper's "sequential
            self-attention computation"), which bounds the transient ``(windows, heads, N, N)``
            logits at high resolution; 0: all windows in one call. The result is the same. In
            training each chunk is recomputed in backward rather than keeping its attention
            weights (more compute, memory bounded by one chunk).
    """

    def __init__(self, dim: int, num_heads: int, pretrained_window_size: int = 0,
                 qkv_bias: bool = True, attn_drop: float = 0., proj_drop: float = 0.,
                 cpb_hidden: int = 512, fused: Union[bool, str] = False,
                 learnable_k_bias: bool = False,
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
        #: name -> (key, value) of what :meth:`_reused` keeps between inference forwards.
        self._reuse = {}

    def forward(self, x: torch.Tensor, window: Size2, mask: Optional[ShiftMask] = None,
                residual_norm: Optional[Callable] = None, in_place: bool = False) -> torch.Tensor:
        """Attend within windows.

        Args:
            x: ``(B * nW, N, C)`` tokens of ``nW`` windows of ``N = wh * ww`` tokens each.
            window: ``(wh, ww)``.
            mask: the shifted-window mask of the ``nW`` windows, or None.
            residual_norm: return ``x + residual_norm(attention)`` instead (a block's
                residual branch, in window order), each piece as it is made (see
                :func:`assemble`).
            in_place: with ``residual_norm``, the caller gives ``x`` up (a block's fresh
                gather into windows): the pieces may write that sum over it, where the types
                allow (see :func:`assemble`; with ``attn_chunk_windows`` it is not).
        """
        position_bias = self.position_bias(window)  # (heads, N, N) fp32, shared by all windows
        if self.chunk_windows and x.shape[0] > self.chunk_windows:
            out = self._attend_in_chunks(x, position_bias, mask)
            return out if residual_norm is None else x + residual_norm(out)
        pieces = self._inference_pieces(x, mask)
        # in CPU inference where no unmasked logit can fall to the floor, only the masked
        # windows are floored (see _explicit)
        masked_floor_only = eager_cpu_inference(x, self.qkv.weight) and \
            not self._floor_can_bind(window)
        return assemble(x, pieces, lambda start, stop, rows: self._attend(
            x[start:stop], position_bias, mask, rows, masked_floor_only),
            residual_norm, in_place)

    def _attend_in_chunks(self, x: torch.Tensor, position_bias: torch.Tensor,
                          mask: Optional[ShiftMask]) -> torch.Tensor:
        """``chunk_windows`` windows per call. In training each chunk keeps only its inputs for
        backward and is recomputed there, so the attention weights of one chunk at a time exist
        (with with_cp, inside the block's own recomputation too)."""
        recompute = self.training and torch.is_grad_enabled()
        outputs = []
        for start in range(0, x.shape[0], self.chunk_windows):
            stop = min(start + self.chunk_windows, x.shape[0])
            rows = None if mask is None else mask.windows(start, stop)  # this chunk's masks
            if recompute:
                outputs.append(checkpoint(self._attend, x[start:stop], position_bias, rows,
                                          use_reentrant=False))
            else:
                outputs.append(self._attend(x[start:stop], position_bias, rows))
        return torch.cat(outputs)

    def _inference_pieces(self, x: torch.Tensor, mask: Optional[ShiftMask]):
        """``(start, stop, rows)`` window ranges of ``x`` to attend one after another in CPU
        inference, each with at most :data:`PIECE_BYTES` of qkv projection and logits (or one
        row of windows, if that is more); ``rows`` as :meth:`.windows.ShiftMask.add_to` takes
        it. One piece (all windows) elsewhere.

        The result is the same. The point is the allocator: glibc takes large tensors
        straight from the system and gives them back when freed, so each forward faults the
        large temporaries of the first stages in again, page by page. Pieces are served from
        memory the process keeps and reuses. SwinV2-T at 800x1344 (with the MLP in pieces
        too), AMD EPYC, 2 threads, A/B in one process: memory faulted in per forward 689 ->
        98 MiB, the forward 1.09x faster in fp32 and 1.23x under bf16 autocast; 8 x 256²
        fp32 1.10x. A shifted block's pieces are whole images, or whole rows of windows of
        one image, so that the compact mask applies to each."""
        BnW, N, C = x.shape
        if self.fused is True or not eager_cpu_inference(x, self.qkv.weight):
            return [(0, BnW, None)]
        per_window = N * (3 * C + self.num_heads * N) * 4  # qkv and fp32 logits, bytes
        windows = max(1, PIECE_BYTES // per_window)
        if BnW <= windows:
            return [(0, BnW, None)]
        if mask is None:  # any windows
            return [(start, stop, None) for start, stop in spans(BnW, windows)]
        nW, (gh, gw) = mask.num_windows, mask.grid
        if windows >= nW:  # whole images
            return [(first * nW, last * nW, None)
                    for first, last in spans(BnW // nW, windows // nW)]
        # rows of windows of one image
        return [(image + r0 * gw, image + r1 * gw, (r0, r1))
                for image in range(0, BnW, nW) for r0, r1 in spans(gh, max(1, windows // gw))]

    def position_bias(self, window: Size2) -> torch.Tensor:
        """The ``(heads, N, N)`` fp32 bias of a ``window`` (reused outside training)."""
        def compute():
            with torch.autocast(self.cpb_mlp[0].weight.device.type, enabled=False):
                bias = continuous_position_bias(
                    self.cpb_mlp, window, (self.pretrained_window_size,) * 2, self.num_heads,
                    self.cpb_coords, self.cpb_bounded)
            return bias.to(_logit_dtype(bias.dtype))
        return self._reused('position_bias', compute, list(self.cpb_mlp.parameters()),
                            tuple(window), self.pretrained_window_size)

    def _floor_can_bind(self, window: Size2) -> bool:
        """Whether a row of unmasked logits (``cos * scale + bias``) can spread over more than
        ``-LOGIT_FLOOR``, so that the floor (see Subnormal floats) can raise one of them: per
        head at most ``2 * scale`` (cosines lie in [-1, 1]) plus the spread of the head's
        position bias; below that bound (with a margin of 1 for rounding) flooring them is
        the identity, exactly. Reused outside training, as the position bias is."""
        def compute():
            bias = self.position_bias(window)
            bias_spread = (bias.amax((-2, -1)) - bias.amin((-2, -1))).float()
            spread = 2 * self.temperature(torch.float32).flatten() + bias_spread
            return bool(spread.max() >= -LOGIT_FLOOR - 1)
        return self._reused('floor_can_bind', compute,
                            [self.logit_scale, *self.cpb_mlp.parameters()], tuple(window),
                            self.pretrained_window_size)

    def temperature(self, dtype: torch.dtype) -> torch.Tensor:
        """``(heads, 1, 1)``: the factor on the cosines, ``exp(min(logit_scale, ln 100))``."""
        return torch.clamp(self.logit_scale.to(dtype), max=MAX_LOGIT_SCALE).exp()

    def qkv_bias(self) -> Optional[torch.Tensor]:
        """``(3 * dim,)``: q bias, zero (or the learnt) k bias, v bias; None without biases."""
        if self.q_bias is None:
            return None
        biases = [b for b in (self.q_bias, self.k_bias, self.v_bias) if b is not None]

        def compute():
            k_bias = self.k_bias if self.k_bias is not None else torch.zeros_like(self.v_bias)
            return torch.cat((self.q_bias, k_bias, self.v_bias))
        return self._reused('qkv_bias', compute, biases)

    def _reused(self, name: str, compute, params, *key):
        """``compute()``, or its value from an earlier call while no parameter in ``params``
        can have changed: never in training, while autograd needs it, or while compiling."""
        if (self.training or torch.compiler.is_compiling()
                or (torch.is_grad_enabled() and any(p.requires_grad for p in params))):
            return compute()
        key = (*key, *((p.data_ptr(), p.dtype, p._version) for p in params))
        hit = self._reuse.get(name)
        if hit is None or hit[0] != key:
            hit = self._reuse[name] = (key, compute())
        return hit[1]

    def train(self, mode: bool = True) -> 'WindowAttentionV2':
        self._reuse.clear()
        return super().train(mode)

    def _attend(self, x: torch.Tensor, position_bias: torch.Tensor,
                mask: Union[ShiftMask, torch.Tensor, None],
                rows: Optional[Size2] = None, masked_floor_only: bool = False) -> torch.Tensor:
        """Attention of ``x``'s windows; ``mask``: a :class:`ShiftMask` of whole images (or of
        window ``rows`` of one image, see :meth:`.windows.ShiftMask.add_to`), or one ``(N, N)``
        mask per window of ``x``; ``masked_floor_only``: see :meth:`_explicit`."""
        BnW, N, C = x.shape
        heads = self.num_heads
        qkv = linear(x, self.qkv.weight, self.qkv_bias())
        if self.fused is not True and not isinstance(mask, torch.Tensor) and \
                cpu_kernel.applies(qkv, position_bias, self.qkv.weight, self.training):
            # the same ops as below, fused (see cpu_kernel); rows: the windows of one image
            first_window = rows[0] * mask.grid[1] if rows is not None else 0
            floor = cpu_kernel.FLOOR_MASKED_WINDOWS if masked_floor_only else \
                cpu_kernel.FLOOR_ALL
            out = cpu_kernel.window_attention(qkv, self.temperature(torch.float32).flatten(),
                                              position_bias, mask, first_window, floor)
            return self.proj_drop(linear(out, self.proj.weight, self.proj.bias))
        cpu = x.device.type == 'cpu'
        if cpu and qkv.dtype == torch.float32:  # see "Subnormal floats" in the class docstring
            qkv = flush_subnormal_gradient(qkv)
        q, k, v = qkv.view(BnW, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4).unbind(0)
        with torch.autocast(x.device.type, enabled=False):  # the logits in fp32 (see above)
            dtype = _logit_dtype(q.dtype)
            scale = self.temperature(dtype)
            # q and k contiguous per head, as the product needs them (else it copies them
            # itself and keeps the copies for backward), in one copy each: the normalisation's
            # output, read straight from the qkv rows; or the cast's, where one comes first
            # (or where a graph is traced)
            q, k = (_contiguous(t, dtype) if t.dtype != dtype or traced() else t for t in (q, k))
            q = scaled_normalize(q, scale)  # the logit scale folded into q
            k = scaled_normalize(k)
            fused = self.fused if self.fused != 'auto' else auto_fused(x.device.type)
            if fused:
                out = self._fused(q, k, v, position_bias, mask)
                out = flush_subnormals(out) if cpu else out
            else:  # the bias is already of the logits' type; the floor: see the class docstring
                floor = cpu and dtype == torch.float32
                out = self._explicit(q, k, v, position_bias, mask, rows, floor,
                                     masked_floor_only)
        out = out.transpose(1, 2).reshape(BnW, N, C)
        return self.proj_drop(linear(out, self.proj.weight, self.proj.bias))

    def _explicit(self, q, k, v, bias, mask, rows=None, floor=False, masked_floor_only=False):
        """The official order of operations, ``softmax(cos * scale + bias [+ mask]) @ v``, with
        the scale folded into q; the product with v in v's type; with ``floor``, the softmax
        of floored logits (see the class docstring), or with ``masked_floor_only`` too (in CPU
        inference where :meth:`_floor_can_bind` is False) of those of the masked windows only:
        the same result, without two passes over the other windows' logits (SwinV2-T at
        initial logit scales, Intel Xeon, 2 threads, A/B in one process, 40 alternations: the
        forward 1.01x faster at 8 x 256² in fp32, 1.02x under bf16 autocast)."""
        attn = q @ k.transpose(-2, -1)
        attn += bias  # in place: the product is not needed for its own gradient
        if isinstance(mask, ShiftMask):
            mask.add_to(attn, rows)  # only the last row and column of windows
        elif mask is not None:
            attn += mask.unsqueeze(1)
        if floor and masked_floor_only:  # a ShiftMask or None here (see forward)
            for windows, _ in mask.regions(attn, rows) if mask is not None else []:
                raise_to_floor_(windows)
            floor = False
        attn = F.dropout(_softmax(attn, floor), self.attn_drop, self.training)
        return matmul(attn.to(v.dtype), v)

    def _fused(self, q, k, v, bias, mask):
        """``scaled_dot_product_attention`` in the logits' type (fp32) with bias + mask as the
        additive mask."""
        BnW, heads, N, d = q.shape
        if isinstance(mask, ShiftMask):
            # fold the windows into the heads so that one (nW * heads, N, N) mask serves the batch
            nW = mask.num_windows
            q, k, v = (t.reshape(BnW // nW, nW * heads, N, d) for t in (q, k, v))
            bias = (bias.unsqueeze(0) + mask.full().unsqueeze(1)).reshape(1, nW * heads, N, N)
        elif mask is not None:
            bias = bias.unsqueeze(0) + mask.unsqueeze(1)  # (BnW, heads, N, N)
        else:  # 4-D: with a 3-D mask the CPU dispatcher falls back to the unfused math kernel
            bias = bias.unsqueeze(0)
        out = F.scaled_dot_product_attention(
            q, k, v.to(q.dtype), attn_mask=bias, scale=1.0,
            dropout_p=self.attn_drop if self.training else 0.0)
        return out.reshape(BnW, heads, N, d).to(v.dtype)


def assemble(x: torch.Tensor, pieces: Sequence[tuple], compute: Callable,
             residual_norm: Optional[Callable] = None, in_place: bool = False) -> torch.Tensor:
    """The outputs ``compute(*piece)`` of ``pieces`` of ``x`` (``(start, stop, ...)`` ranges of
    its first dimension, in order, covering it), put together; with ``residual_norm``,
    ``x[start:stop] + residual_norm(compute(*piece))`` instead, written over ``x`` itself if
    ``in_place`` and the sum has ``x``'s type (each piece reads only its own rows of ``x``,
    before they are overwritten). Each piece is written into the one output as soon as it is
    made, while it is still in cache: no concatenation afterwards, and the norm and residual
    add run on data in cache rather than in separate passes over the whole map. SwinV2-T, AMD
    EPYC, 2 threads, A/B in one process (medians of 8-12 alternations): the forward 1.01x
    (8 x 256²) and 1.02x (800x1344) faster in fp32, 1.03x and 1.11x under bf16 autocast."""
    if residual_norm is None and len(pieces) == 1:  # all of x: no output to copy into
        return compute(*pieces[0])
    out = None
    for piece in pieces:
        start, stop = piece[:2]
        y = compute(*piece)
        if residual_norm is not None:
            y = residual_norm(y)
        if out is None:
            dtype = y.dtype if residual_norm is None else torch.promote_types(x.dtype, y.dtype)
            out = x if in_place and residual_norm is not None and dtype == x.dtype else \
                y.new_empty((x.shape[0], *y.shape[1:]), dtype=dtype)
        if residual_norm is None:
            out[start:stop] = y
        else:
            torch.add(x[start:stop], y, out=out[start:stop])
    return out


def spans(total: int, step: int) -> list:
    """``(start, stop)`` ranges covering ``range(total)`` in order: the fewest ranges of at most
    ``step`` that do, their lengths differing by at most one (no short last range: 32768
    tokens in ranges of at most 5461 are seven of 4681 or 4682, not six of 5461 and one of 2);
    one range when ``total <= step``."""
    count = max(1, -(-total // step))
    bounds = [total * i // count for i in range(count + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def _softmax(logits: torch.Tensor, floor: bool = False) -> torch.Tensor:
    """Softmax over the last dimension; with ``floor``, of the logits floored below their row's
    largest (:func:`.lean_autograd.floored_softmax`). In place where autograd does not record
    it (the out= form of the op has no backward) and no graph is traced. The logits are a
    temporary of this module, and the largest tensor of the block: writing the weights over
    them saves a fresh ``(windows, heads, N, N)`` tensor, whose pages the kernel faults in on
    first touch (stage 1 at 800x1344, fp32: 15.7 ms with a fresh output, 4.8 ms in place; the
    forward 1.03x)."""
    if records_autograd(logits) or traced():
        return floored_softmax(logits) if floor else logits.softmax(dim=-1)
    if floor:
        raise_to_floor_(logits)
    return torch.ops.aten._softmax.out(logits, -1, False, out=logits)


def _contiguous(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` in ``dtype``, contiguous, in one copy (``.to`` keeps a permuted layout unless
    asked, and asking is ignored when the type does not change)."""
    return x.to(dtype, memory_format=torch.contiguous_format) if x.dtype != dtype \
        else x.contiguous()


def _logit_dtype(dtype: torch.dtype) -> torch.dtype:
    """The type the logits are computed in: fp32, or float64 for a float64 model."""
    return torch.float64 if dtype == torch.float64 else torch.float32
