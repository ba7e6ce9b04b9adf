"""The linear layers of CPU inference as oneDNN calls on packed weights.

Every linear layer of the backbone (qkv, output projection, both MLP layers, patch merging)
runs in CPU inference as ``torch.ops.mkldnn._linear_pointwise`` on a copy of its weight that
oneDNN has reordered once into its own blocked layout (``_reorder_linear_weight``; the pair
``torch.compile``'s Inductor emits for frozen CPU graphs). ``F.linear`` instead runs MKL's
``addmm``, which first copies the bias into every output row and then repacks the weight on
every call. Isolated, on SwinV2-T's shapes (AMD EPYC, 2 threads): 1.10-1.18x ``addmm``'s speed
in fp32 and 1.05-1.35x in bf16. The MLP's first layer also applies GELU to each tile of the
product while it is in cache, instead of a separate pass over the ``(tokens, 4C)`` activation.

**Reuse.** The packed copy of a weight is kept, outside the module's state (oneDNN's opaque
tensors cannot be copied or saved), until the parameter changes (its version counter or
storage: ``load_state_dict``, an optimizer step, any in-place edit), the backbone's
``train()`` / ``eval()`` is called (see :func:`forget`) or the parameter dies. So inference
holds each linear weight twice (SwinV2-T: 110 MB in fp32); a model run in both fp32 and bf16
repacks at each switch.

Used only where it applies: CPU; no autograd recording (the kernel has no backward); fp32 or
bf16 input, run in fp32 or (where oneDNN has bf16 kernels) bf16, the autocast type under
``torch.autocast``; not while ``torch.compile`` traces (Inductor does this itself); not in a
traced graph (MMEngine's FLOP counter must see the linear layer). Elsewhere ``F.linear``.
"""
import weakref
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .lean_autograd import eager_cpu_inference

#: id(weight) -> (weak reference to the weight, (storage, version, type), packed weight); the
#: reference drops the entry when the weight dies.
_packed: Dict[int, Tuple[weakref.ref, tuple, torch.Tensor]] = {}


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
           activation: str = 'none') -> torch.Tensor:
    """``F.linear(x, weight, bias)``, followed by GELU if ``activation='gelu'``; in the
    autocast type under ``torch.autocast``."""
    if activation not in ('none', 'gelu'):
        raise ValueError(f"activation must be 'none' or 'gelu', got {activation!r}")
    dtype = _onednn_dtype(x, weight)
    if dtype is None:
        out = F.linear(x, weight, bias)
        return F.gelu(out) if activation == 'gelu' else out
    x2d = x.reshape(-1, x.shape[-1]).to(dtype)
    bias = bias.to(dtype) if bias is not None else None
    out = torch.ops.mkldnn._linear_pointwise(x2d, packed_weight(weight, dtype), bias,
                                             activation, [], 'none')
    return out.view(*x.shape[:-1], weight.shape[0])


def linear_gelu(x: torch.Tensor, weight: torch.Tensor,
                bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``F.gelu(F.linear(x, weight, bias))`` (exact, erf GELU), fused where oneDNN runs."""
    return linear(x, weight, bias, 'gelu')


def packed_weight(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``weight`` in ``dtype``, reordered for oneDNN; reused while the weight is unchanged."""
    key = (weight.data_ptr(), weight._version, dtype)
    entry = _packed.get(id(weight))
    if entry is None or entry[1] != key:
        dropped = weakref.ref(weight, lambda _, i=id(weight): _packed.pop(i, None))
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().to(dtype))
        entry = _packed[id(weight)] = (dropped, key, packed)
    return entry[2]


def forget(module: nn.Module) -> None:
    """Drop the packed copies of ``module``'s weights. Writes through ``.data`` (MMEngine's EMA
    hook swaps weights that way) leave no trace in the version counter; the backbone calls this
    from ``train()`` / ``eval()``, which MMEngine's loops call after such swaps."""
    for param in module.parameters():
        _packed.pop(id(param), None)


def _onednn_dtype(x: torch.Tensor, weight: torch.Tensor) -> Optional[torch.dtype]:
    """The type the oneDNN kernel runs in here, or None where it does not apply."""
    if (not eager_cpu_inference(x, weight) or x.dtype not in (torch.float32, torch.bfloat16)
            or not torch.backends.mkldnn.is_available()):
        return None
    dtype = torch.get_autocast_dtype('cpu') if torch.is_autocast_enabled('cpu') else x.dtype
    if dtype == torch.float32:
        return dtype
    if dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return dtype
    return None
