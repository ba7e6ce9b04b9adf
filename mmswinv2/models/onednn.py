"""The linear layers of CPU inference as oneDNN calls on packed weights, or MKL's GEMM.

Every linear layer of the backbone (qkv, output projection, both MLP layers, patch merging)
runs in CPU inference as ``torch.ops.mkldnn._linear_pointwise`` on a copy of its weight that
oneDNN has reordered once into its own blocked layout (``_reorder_linear_weight``; the pair
``torch.compile``'s Inductor emits for frozen CPU graphs). ``F.linear`` instead runs MKL's
``addmm``, which first copies the bias into every output row and then repacks the weight on
every call. Isolated, on SwinV2-T's shapes (AMD EPYC with AVX-512, 2 threads): 1.10-1.18x
``addmm``'s speed in fp32 and 1.05-1.35x in bf16.

**fp32 products without AVX-512** run in MKL's GEMM instead (``F.linear``, the weight as it
is), where MKL is part of the torch build (:func:`mkl_fp32_products`). On a CPU with AVX2 but
no AVX-512 (AMD EPYC, Zen 3) oneDNN's fp32 kernels were the slower ones: isolated, on
SwinV2-T's shapes, MKL ran at 0.98-1.20x oneDNN's rate on one thread and 0.83-1.17x on two
(e.g. 1024 x 1536 -> 384: 178 against 154 GFLOP/s); in the forward, A/B in one process,
1.07x at 8 x 256² and 1.06x at 800x1344 in fp32, 1.09x under emulated bf16 autocast. On both
AVX-512 CPUs measured, oneDNN's packed weights were the faster: the AMD EPYC above, and an
Intel Xeon (the forward with ``F.linear`` 0.97x).

**GELU** after the MLP's first layer: on bf16 products, oneDNN's post-op (applied to each
tile of the product while it is in cache); on fp32 products, PyTorch's own GELU kernel over
the output in place, which is faster where oneDNN's post-op is slow: AMD EPYC (Zen 3, AVX2), 2
threads, SwinV2-T's four first-layer shapes 1.11-1.19x (e.g. 1050 x 384 -> 1536: 14.5 ms
with the post-op, 13.0 separate), the fp32 forward 1.04x at 8 x 256² and at 800x1344 (A/B in
one process); on an AMD EPYC with AVX-512 the two measured the same. The values were equal.

**Reuse.** The packed copy of a weight (or, for MKL's fp32 products under emulated bf16, its
bf16 rounding) is kept, outside the module's state (oneDNN's opaque tensors cannot be copied
or saved), until the parameter changes (its version counter or storage: ``load_state_dict``,
an optimizer step, any in-place edit), the backbone's ``train()`` / ``eval()`` is called (see
:func:`forget`) or the parameter dies. So inference with packed weights holds each linear
weight twice (SwinV2-T: 110 MB in fp32); a model run in both fp32 and bf16 repacks at each
switch.

**bf16 without bf16 instructions.** Under bf16 autocast on a CPU where oneDNN has no bf16
kernels (no AVX512-BF16 / AMX, e.g. AVX2 only), PyTorch's bf16 matrix products fall back to
a generic loop: on an AMD EPYC (Zen 3, AVX2) SwinV2-T's bf16 forward ran 7x slower than its
fp32 forward, 78 % of it in those products. There the layers run as fp32 products (oneDNN's
or MKL's, as above) of the bf16-rounded input, weight and bias, and the output is rounded to
bf16: the products of two bf16 numbers are exact in fp32, and bf16 kernels accumulate in fp32
too, so this is what a bf16 kernel computes, up to the order of the sums (see
:func:`bf16_emulated`).

Used only where it applies: CPU; no autograd recording (the kernels have no backward); fp32 or
bf16 input, run in fp32 or bf16, the autocast type under ``torch.autocast``; not while
``torch.compile`` traces (Inductor does this itself); not in a traced graph (MMEngine's FLOP
counter must see the linear layer). Elsewhere ``F.linear``.
"""
import weakref
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .lean_autograd import eager_cpu_inference

#: id(weight) -> (weak reference to the weight, (storage, version, types, form), prepared
#: weight; see :func:`_prepared`); the reference drops the entry when the weight dies.
_packed: Dict[int, Tuple[weakref.ref, tuple, torch.Tensor]] = {}


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
           activation: str = 'none') -> torch.Tensor:
    """``F.linear(x, weight, bias)``, followed by GELU if ``activation='gelu'``; in the
    autocast type under ``torch.autocast``."""
    if activation not in ('none', 'gelu'):
        raise ValueError(f"activation must be 'none' or 'gelu', got {activation!r}")
    dtype = _inference_dtype(x, weight)
    if dtype is None:
        out = F.linear(x, weight, bias)
        return F.gelu(out) if activation == 'gelu' else out
    # the autocast rounding of the operands; bf16 without bf16 kernels: then fp32 products
    compute = torch.float32 if bf16_emulated(dtype) else dtype
    x2d = x.reshape(-1, x.shape[-1]).to(dtype).to(compute)
    bias = bias.to(dtype).to(compute) if bias is not None else None
    if compute == torch.float32 and mkl_fp32_products():
        rounded = weight if dtype == torch.float32 else \
            _prepared(weight, dtype, compute, 'bf16-rounded')
        with torch.autocast('cpu', enabled=False):  # the operands are rounded already
            out = F.linear(x2d, rounded, bias)
        post_op = 'none'
    else:
        # GELU: oneDNN's post-op on bf16 products; on fp32 ones PyTorch's GELU, in place (see
        # the module docstring)
        post_op = activation if compute == torch.bfloat16 else 'none'
        out = torch.ops.mkldnn._linear_pointwise(x2d, packed_weight(weight, dtype, compute),
                                                 bias, post_op, [], 'none')
    if post_op != activation:
        torch.ops.aten.gelu_(out)
    return out.to(dtype).view(*x.shape[:-1], weight.shape[0])


def linear_gelu(x: torch.Tensor, weight: torch.Tensor,
                bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``F.gelu(F.linear(x, weight, bias))`` (exact, erf GELU); see the module docstring for
    where GELU runs."""
    return linear(x, weight, bias, 'gelu')


def packed_weight(weight: torch.Tensor, dtype: torch.dtype,
                  compute: Optional[torch.dtype] = None) -> torch.Tensor:
    """``weight`` rounded to ``dtype``, in ``compute`` (default ``dtype``), reordered for
    oneDNN; reused while the weight is unchanged."""
    return _prepared(weight, dtype, compute or dtype, 'oneDNN-packed')


def _prepared(weight: torch.Tensor, dtype: torch.dtype, compute: torch.dtype,
              form: str) -> torch.Tensor:
    """``weight`` rounded to ``dtype``, in ``compute``, and in ``form`` ``'oneDNN-packed'``
    (reordered for oneDNN) or ``'bf16-rounded'`` (as it is); reused while the weight is
    unchanged."""
    key = (weight.data_ptr(), weight._version, dtype, compute, form)
    entry = _packed.get(id(weight))
    if entry is None or entry[1] != key:
        dropped = weakref.ref(weight, lambda _, i=id(weight): _packed.pop(i, None))
        prepared = weight.detach().to(dtype).to(compute)
        if form == 'oneDNN-packed':
            prepared = torch.ops.mkldnn._reorder_linear_weight(prepared)
        entry = _packed[id(weight)] = (dropped, key, prepared)
    return entry[2]


def forget(module: nn.Module) -> None:
    """Drop the packed copies of ``module``'s weights. Writes through ``.data`` (MMEngine's EMA
    hook swaps weights that way) leave no trace in the version counter; the backbone calls this
    from ``train()`` / ``eval()``, which MMEngine's loops call after such swaps."""
    for param in module.parameters():
        _packed.pop(id(param), None)


def _inference_dtype(x: torch.Tensor, weight: torch.Tensor) -> Optional[torch.dtype]:
    """The type the layer runs in here (see :func:`bf16_emulated` for how), or None where
    this module's kernels do not apply (then ``F.linear`` as it is)."""
    if (not eager_cpu_inference(x, weight) or x.dtype not in (torch.float32, torch.bfloat16)
            or not torch.backends.mkldnn.is_available()):
        return None
    dtype = torch.get_autocast_dtype('cpu') if torch.is_autocast_enabled('cpu') else x.dtype
    return dtype if dtype in (torch.float32, torch.bfloat16) else None


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` of two tensors of one type; bf16 in CPU inference without bf16 kernels as
    fp32 products of the bf16 values, rounded to bf16 (see the module docstring)."""
    if eager_cpu_inference(a, b) and bf16_emulated(a.dtype):
        return (a.float() @ b.float()).to(a.dtype)
    return a @ b


def mkl_fp32_products() -> bool:
    """Whether CPU inference runs its fp32 products in MKL's GEMM rather than oneDNN's: where
    the torch build has MKL and the CPU has no AVX-512 (see the module docstring; PyTorch's
    CPU capability, which ``ATEN_CPU_CAPABILITY`` can lower)."""
    return (torch.backends.mkl.is_available()
            and not torch.backends.cpu.get_cpu_capability().startswith('AVX512'))


def bf16_emulated(dtype: torch.dtype) -> bool:
    """Whether CPU products in ``dtype`` run as fp32 products of bf16 values: bf16 where
    oneDNN has no bf16 kernels."""
    return dtype == torch.bfloat16 and not bf16_kernels()


def bf16_kernels() -> bool:
    """Whether oneDNN has bf16 kernels for this CPU (AVX512-BF16, AMX, ...)."""
    return torch.ops.mkldnn._is_mkldnn_bf16_supported()
