"""A linear layer prepared once for CPU inference in one type."""
from typing import Optional

import torch
import torch.nn.functional as F

from . import torch_private


class PreparedLinear:
    """``x @ W.T + b`` (then GELU, if asked) with the weight and bias taken from the layer
    once, in the type the products run in: for fp32, and for bf16 where oneDNN has bf16
    kernels, the weight reordered into oneDNN's blocked layout and the bias and GELU fused into
    the product (:mod:`.torch_private`); otherwise (float64, no oneDNN) ``F.linear``."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], dtype: torch.dtype):
        self.dtype = dtype
        self.packed = torch_private.packed_linear_supported() and (
            dtype == torch.float32 or (dtype == torch.bfloat16 and torch_private.bf16_supported()))
        weight = weight.detach().to(dtype)
        self.weight = torch_private.reorder_linear_weight(weight) if self.packed else weight
        self.bias = bias.detach().to(dtype) if bias is not None else None
        self.out_features = weight.shape[0]

    def __call__(self, x: torch.Tensor, gelu: bool = False) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1]).to(self.dtype)
        if self.packed:
            out = torch_private.linear_pointwise(rows, self.weight, self.bias, gelu)
        else:
            out = F.linear(rows, self.weight, self.bias)
            if gelu:
                out = F.gelu(out)
        return out.view(*x.shape[:-1], self.out_features)
