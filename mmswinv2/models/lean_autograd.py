"""Operations of the block with a leaner backward than autograd records by default.

Each computes exactly what the plain PyTorch ops compute, except where it says it sets
subnormal floats to 0 (values moved by at most 1.2e-38) or floors the logits (weights moved by
at most ``N e^LOGIT_FLOOR``); what is kept for backward differs. Measured on SwinV2-T, one
800x1344 training step: the tensors kept for backward shrink from 2.9 to 1.9 GiB (with q and k
copied contiguous in ``attention.py``), because

* :func:`scaled_normalize` keeps its output (which the ``q . k`` product keeps anyway) instead
  of its input, so the ``(tokens, 3C)`` qkv projection is freed after the forward;
* :func:`gelu_linear` keeps GELU's input only and recomputes GELU in backward, instead of
  keeping both the ``(tokens, 4C)`` input and output of GELU;
* :func:`flush_subnormals` and :func:`flush_subnormal_gradient` keep nothing (the gradient of
  the first is taken as the identity's);
* :func:`floored_softmax` keeps only its output, as softmax does (the floor, as a separate
  op, would keep its input too).

The custom functions run only where autograd records in eager mode. Elsewhere the plain ops
run: in inference; in traced graphs such as MMEngine's FLOP counter, which cannot see inside a
Python autograd function; and while ``torch.compile`` traces, where AOTAutograd splits forward
and backward itself (Inductor's partitioner recomputes cheap element-wise ops such as GELU)
and where Dynamo in torch 2.13 fails on these functions with dynamic shapes.
"""
from typing import Optional

import torch
import torch.nn.functional as F

#: The smallest norm q and k are divided by (``F.normalize``'s default eps).
NORMALIZE_EPS = 1e-12

#: :func:`floored_softmax` raises logits to at least this much below their row's largest, so
#: that no weight, and no product of a weight with a value above ~1e-11, is a subnormal float.
LOGIT_FLOOR = -60.

#: The types whose subnormal values the flushes set to 0 (float64 is left alone).
FLUSHED_DTYPES = (torch.float32, torch.bfloat16)


def scaled_normalize(x: torch.Tensor, scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.normalize(x, dim=-1) * scale`` in one pass over ``x`` (the scale is applied to the
    small tensor of norms). ``scale`` must be positive (it is ``exp`` of the logit scale).
    Eagerly, the result is contiguous whatever the strides of ``x``, which is read where it
    lies: q or k viewed in the rows of the qkv projection need no copy first (SwinV2-T, fp32,
    Intel Xeon, 2 threads, A/B in one process: the attention 1.02x faster)."""
    if _records_autograd(x, scale):
        return _ScaledNormalize.apply(x, scale)
    return _scaled_normalize(x, scale)[0]


def gelu_linear(hidden: torch.Tensor, weight: torch.Tensor,
                bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``F.linear(F.gelu(hidden), weight, bias)`` (exact, erf GELU)."""
    if _records_autograd(hidden, weight, bias):
        return _GeluLinear.apply(hidden, weight, bias)
    return F.linear(F.gelu(hidden), weight, bias)


def flush_subnormals(x: torch.Tensor) -> torch.Tensor:
    """fp32 / bf16 values below the smallest normal number (1.2e-38) set to 0; the gradient
    passes unchanged (the identity's: the values moved by at most 1.2e-38)."""
    if x.dtype not in FLUSHED_DTYPES:
        return x
    if _records_autograd(x):
        return _FlushSubnormals.apply(x)
    return _flush(x)


def flush_subnormal_gradient(x: torch.Tensor) -> torch.Tensor:
    """``x``, whose gradient has its fp32 / bf16 subnormal values set to 0 (each moved by at
    most 1.2e-38) before it flows on to the op that made ``x``."""
    if x.dtype in FLUSHED_DTYPES and _records_autograd(x):
        return _FlushSubnormalGradient.apply(x)
    return x


def floored_softmax(logits: torch.Tensor) -> torch.Tensor:
    """``softmax(max(logits, rowmax + LOGIT_FLOOR))`` over the last dimension: the softmax,
    except that weights below ``e^LOGIT_FLOOR`` (9e-27) times their row's largest come out as
    exactly that, the others renormalised; no weight moves by more than ``N e^LOGIT_FLOOR``
    for rows of ``N``. Its gradient is softmax's at these weights (the floor is taken as the
    identity), with its subnormal values set to 0: ``w (g - w . g)`` for weights of ~e^-60 times
    small gradients ``g`` is often subnormal."""
    if _records_autograd(logits):
        return _FlooredSoftmax.apply(logits)
    return torch.maximum(logits, logits.amax(-1, keepdim=True) + LOGIT_FLOOR).softmax(-1)


def raise_to_floor_(logits: torch.Tensor) -> torch.Tensor:
    """``logits`` raised in place to at least their row's largest plus ``LOGIT_FLOOR``."""
    floor = logits.amax(-1, keepdim=True)
    floor += LOGIT_FLOOR
    return torch.maximum(logits, floor, out=logits)


def records_autograd(*tensors: Optional[torch.Tensor]) -> bool:
    """Whether autograd records an op on ``tensors``."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def traced() -> bool:
    """Whether a graph is being traced (``torch.compile`` or ``torch.jit.trace``): custom
    kernels and autograd functions give way to the plain ops there."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def eager_cpu_inference(*tensors: Optional[torch.Tensor]) -> bool:
    """Whether ops on ``tensors`` run eagerly on the CPU with no autograd recording: where
    CPU-only inference kernels and the inference pieces of ``attention.py`` apply."""
    return (tensors[0].device.type == 'cpu' and not records_autograd(*tensors)
            and not traced())


def _records_autograd(*tensors: Optional[torch.Tensor]) -> bool:
    """Whether eager autograd records an op on ``tensors`` (see the module docstring)."""
    return records_autograd(*tensors) and not traced()


def _scaled_normalize(x, scale):
    # |x| as the square root of x . x: PyTorch's norm kernel is slow over rows as short as a
    # head's (32): SwinV2-T, AMD EPYC (Zen 3), 2 threads, the norms of q and k 120 -> 70 ms
    # per 800x1344 fp32 forward; the forward 1.02x at 8 x 256², 1.04x at 800x1344 (A/B).
    # Clamped before the root, so that where autograd differentiates these ops (traced
    # graphs) a zero row (padding's k) gets a zero gradient, not 0 * inf
    norm = torch.linalg.vecdot(x, x).unsqueeze(-1).clamp_min(NORMALIZE_EPS ** 2).sqrt()
    # eagerly into a contiguous output (else it would take the strides of x), where autograd
    # does not record it (out= has no gradient); a traced graph chooses its own layouts
    out = None if traced() or records_autograd(x, scale) else \
        torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if scale is not None:
        return torch.mul(x, scale / norm, out=out), norm
    return torch.div(x, norm, out=out), norm


def _flush(x):
    return F.hardshrink(x, torch.finfo(x.dtype).tiny)


def _flush_(x):
    return torch.ops.aten.hardshrink.out(x, torch.finfo(x.dtype).tiny, out=x)


class _ScaledNormalize(torch.autograd.Function):
    """``y = s * x / max(|x|, eps)``; backward from ``y``, the norm and ``s``:
    with ``u = y / s``, ``dx = s / |x| * (dy - u (u . dy))`` where ``|x| > eps`` and
    ``dx = s / eps * dy`` where the norm was clamped (as for ``F.normalize``);
    ``ds = sum(u . dy)`` over what ``s`` was broadcast across."""

    @staticmethod
    def forward(ctx, x, scale):
        y, norm = _scaled_normalize(x, scale)
        ctx.save_for_backward(y, norm, scale)
        return y

    @staticmethod
    def backward(ctx, grad):
        y, norm, scale = ctx.saved_tensors
        s = scale if scale is not None else torch.ones((), dtype=y.dtype, device=y.device)
        u = y / s
        u_dot_grad = (u * grad).sum(-1, keepdim=True)
        grad_x = grad_scale = None
        if ctx.needs_input_grad[0]:
            projected = torch.where(norm > NORMALIZE_EPS, u * u_dot_grad, 0)
            grad_x = (s / norm) * (grad - projected)
        if scale is not None and ctx.needs_input_grad[1]:
            grad_scale = u_dot_grad.sum_to_size(scale.shape)
        return grad_x, grad_scale


class _GeluLinear(torch.autograd.Function):
    """Keeps GELU's input and recomputes its output in backward (for the weight gradient).
    The linear layer runs in the autocast type when autocast is on, as ``F.linear`` does."""

    @staticmethod
    def forward(ctx, hidden, weight, bias):
        ctx.save_for_backward(hidden, weight)
        ctx.bias_dtype = None if bias is None else bias.dtype
        return F.linear(F.gelu(hidden), weight, bias)

    @staticmethod
    def backward(ctx, grad):
        hidden, weight = ctx.saved_tensors
        grad_2d = grad.reshape(-1, grad.shape[-1])
        hidden_2d = hidden.reshape(-1, hidden.shape[-1])
        grad_hidden = grad_weight = grad_bias = None
        # one (tokens, hidden) temporary at a time: GELU's output, then the gradient of GELU's
        # output, turned in place into the gradient of its input
        if ctx.needs_input_grad[1]:
            act = F.gelu(hidden_2d).to(grad.dtype)
            grad_weight = (grad_2d.t() @ act).to(weight.dtype)
            del act
        if ctx.needs_input_grad[0]:
            grad_act = (grad_2d @ weight.to(grad.dtype)).to(hidden.dtype)
            grad_hidden = torch.ops.aten.gelu_backward.grad_input(
                grad_act, hidden_2d, grad_input=grad_act).view(hidden.shape)
        if ctx.bias_dtype is not None and ctx.needs_input_grad[2]:
            grad_bias = grad_2d.sum(0).to(ctx.bias_dtype)
        return grad_hidden, grad_weight, grad_bias


class _FlushSubnormals(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return _flush(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


class _FlushSubnormalGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return _flush(grad)


class _FlooredSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits):
        weights = raise_to_floor_(logits.clone())
        torch.ops.aten._softmax.out(weights, -1, False, out=weights)
        ctx.save_for_backward(weights)
        return weights

    @staticmethod
    def backward(ctx, grad):
        weights, = ctx.saved_tensors
        return _flush_(torch._softmax_backward_data(grad, weights, -1, weights.dtype))
