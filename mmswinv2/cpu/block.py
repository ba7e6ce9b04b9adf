"""The inference module that takes a SwinV2 block's place in CPU inference."""
from typing import Dict, Optional

import torch
import torch.nn as nn

from ..models.blocks import SwinBlockV2
from ..models.windows import (ShiftMask, pad_to_multiple, shift_mask, window_and_shift,
                              window_partition, window_reverse)
from . import kernel, torch_private
from .linear import PreparedLinear

#: The largest temporary of a block's branch, in bytes: each branch runs on pieces of rows
#: (windows for the attention, tokens for the MLP) whose projections stay below glibc's
#: largest mmap threshold (32 MiB), so that they come from memory the allocator keeps instead
#: of being faulted in afresh on every forward.
PIECE_BYTES = 31 * 2**20


class WatchedParameter(nn.Parameter):
    """A parameter whose ``.data`` is its ``detach()``: writes through it bump the version
    counter that in-place writes bump (through ``.data`` they would not), and ``.data = t``
    counts its replacements. :class:`InferenceBlock` watches its sources with these."""

    @property
    def data(self) -> torch.Tensor:
        return self.detach()

    @data.setter
    def data(self, value: torch.Tensor) -> None:
        torch.Tensor.data.__set__(self, value)
        self.__dict__['replaced'] = self.__dict__.get('replaced', 0) + 1


class InferenceBlock(nn.Module):
    """A :class:`~mmswinv2.models.blocks.SwinBlockV2` for CPU inference: the block's own
    modules under the same names (the same parameters and state-dict keys), and its four
    linear layers prepared once per type (:class:`.linear.PreparedLinear`).

    Eager CPU inference (no autograd recording, no tracing; fp32, bf16 autocast or float64)
    runs the block's function with the prepared linear layers and the attention core in the
    compiled kernel (:mod:`.kernel`), each branch on pieces of at most :data:`PIECE_BYTES` of
    projections, its residual sum written over the block's own windows and map. Anything else
    runs the block itself.

    The prepared layers are rebuilt when a source parameter was written since: its storage or
    version counter changed (in-place writes, ``load_state_dict``, optimizer steps, and
    ``.data`` writes through :class:`WatchedParameter`) or it was replaced through ``.data =``.
    """

    def __init__(self, block: SwinBlockV2):
        super().__init__()
        self.block = (block,)  # the original, not a submodule: state-dict keys stay the same
        for name, module in block.named_children():
            self.add_module(name, module)
        self.norm3 = block.norm3
        self.window_size, self.shifted = block.window_size, block.shifted
        attn, mlp = self.attn, self.mlp
        self.linear_sources = tuple(p for p in (
            attn.qkv.weight, attn.q_bias, attn.k_bias, attn.v_bias, attn.proj.weight,
            attn.proj.bias, mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias)
            if p is not None)
        for param in self.linear_sources:
            param.__class__ = WatchedParameter
        self._state: Dict[torch.dtype, tuple] = {}
        self.prepare(attn.qkv.weight.dtype)

    def restore(self) -> SwinBlockV2:
        """Unwatch the parameters; returns the original block."""
        for param in self.linear_sources:
            param.__class__ = nn.Parameter
            param.__dict__.pop('replaced', None)
        self._state.clear()
        return self.block[0]

    def prepare(self, dtype: torch.dtype) -> tuple:
        """The four linear layers prepared in ``dtype`` (rebuilt if a source changed)."""
        key = tuple((p.data_ptr(), p.dtype, torch_private.version(p),
                     p.__dict__.get('replaced', 0)) for p in self.linear_sources)
        state = self._state.get(dtype)
        if state is None or state[0] != key:
            attn, mlp = self.attn, self.mlp
            state = self._state[dtype] = (key, (
                PreparedLinear(attn.qkv.weight, attn.qkv_bias(), dtype),
                PreparedLinear(attn.proj.weight, attn.proj.bias, dtype),
                PreparedLinear(mlp.fc1.weight, mlp.fc1.bias, dtype),
                PreparedLinear(mlp.fc2.weight, mlp.fc2.bias, dtype)))
        return state[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self._compute_dtype(x)
        if dtype is None:
            return self.block[0](x)
        qkv, proj, fc1, fc2 = self.prepare(dtype)
        H, W = x.shape[1:3]
        window, shift = window_and_shift((H, W), self.window_size, self.shifted)
        shifted = pad_to_multiple(x, window)
        padded_hw = shifted.shape[1:3]
        if any(shift):
            shifted = torch.roll(shifted, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        windows = window_partition(shifted, window)
        if windows.untyped_storage().data_ptr() == x.untyped_storage().data_ptr():
            windows = windows.clone()  # a view of x (one window): the sums go over windows
        mask = shift_mask(padded_hw, window, shift, x.device)
        bias = self.attn.position_bias(window)
        BnW, N = windows.shape[:2]
        for start, stop in pieces(BnW, N * qkv.out_features * dtype.itemsize):
            part = windows[start:stop]
            part += self.norm1(self._attention(part, bias, mask, start, qkv, proj))
        attended = window_reverse(windows, window, padded_hw)
        if any(shift):
            attended = torch.roll(attended, shifts=shift, dims=(1, 2))
        x = attended[:, :H, :W].contiguous()  # x + norm1(attn(x)); padding dropped
        tokens = x.view(-1, x.shape[-1])
        for start, stop in pieces(len(tokens), fc1.out_features * dtype.itemsize):
            part = tokens[start:stop]
            part += self.norm2(fc2(fc1(part, gelu=True)))
        return self.norm3(x) if self.norm3 is not None else x

    def _attention(self, windows: torch.Tensor, bias: torch.Tensor,
                   mask: Optional[ShiftMask], first: int, qkv: PreparedLinear,
                   proj: PreparedLinear) -> torch.Tensor:
        """The attention of ``windows``, windows ``first ..`` of the batch."""
        attn = self.attn
        if not kernel.available():  # the model's own attention (its F.linear)
            masks = mask.windows(first, first + len(windows)) if mask is not None else None
            return attn.attend(windows, bias, masks)
        patterns, kinds = ((mask.patterns.to(bias.dtype), mask.kinds()) if mask is not None
                           else (bias.new_empty(0), torch.empty(0, dtype=torch.long)))
        return proj(kernel.window_attention(qkv(windows), attn.temperature(bias.dtype).flatten(),
                                            bias, patterns, kinds, first % max(1, kinds.numel())))

    def _compute_dtype(self, x: torch.Tensor) -> Optional[torch.dtype]:
        """The type the products run in, or None where the block itself must run."""
        tracing = (torch.compiler.is_compiling() or torch.jit.is_tracing()
                   or torch.compiler.is_exporting())
        if (x.device.type != 'cpu' or tracing or self.attn.fused is True
                or (torch.is_grad_enabled() and (x.requires_grad or any(
                    p.requires_grad for p in self.parameters())))):
            return None
        dtype = torch.get_autocast_dtype('cpu') if torch.is_autocast_enabled('cpu') \
            and x.dtype == torch.float32 else x.dtype
        return dtype if dtype in (torch.float32, torch.bfloat16, torch.float64) else None

    def __getstate__(self):  # copies and pickles leave the prepared state behind
        return {**self.__dict__, '_state': {}}


def pieces(rows: int, row_bytes: int) -> list:
    """``(start, stop)`` ranges covering ``range(rows)``, each of at most :data:`PIECE_BYTES`
    (``row_bytes`` a row; one row at least), as even as that allows."""
    count = max(1, -(-rows // max(1, PIECE_BYTES // row_bytes)))
    bounds = [rows * i // count for i in range(count + 1)]
    return list(zip(bounds[:-1], bounds[1:]))
