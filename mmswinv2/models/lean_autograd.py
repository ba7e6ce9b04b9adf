"""Two ops of the block with a leaner backward than autograd records for the plain ops.

Each computes what the plain ops compute; what differs is what is kept for backward:

* :func:`scaled_normalize` keeps its output (which the ``q . k`` product keeps anyway) instead
  of its input, so the ``(tokens, 3C)`` qkv projection is freed after the forward;
* :func:`gelu_linear` keeps GELU's input and recomputes GELU in backward, instead of keeping
  both the ``(tokens, 4C)`` input and output of GELU.

They run where autograd records eagerly. While a graph is traced (``torch.compile``, whose
partitioner recomputes cheap element-wise ops itself; ``torch.jit.trace``, as in MMEngine's
FLOP counter; ``torch.export``) the plain ops run. Measured memory: ``docs/performance.md``.
"""
from typing import Optional

import torch
import torch.nn.functional as F

#: The smallest norm q and k are divided by (``F.normalize``'s default eps).
NORMALIZE_EPS = 1e-12


def scaled_normalize(x: torch.Tensor, scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.normalize(x, dim=-1) * scale`` (``scale`` positive, or None for 1)."""
    if _eager_autograd(x, scale):
        return _ScaledNormalize.apply(x, scale)
    return _scaled_normalize(x, scale)[0]


def gelu_linear(hidden: torch.Tensor, weight: torch.Tensor,
                bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``F.linear(F.gelu(hidden), weight, bias)`` (exact, erf GELU)."""
    if _eager_autograd(hidden, weight, bias):
        return _GeluLinear.apply(hidden, weight, bias)
    return F.linear(F.gelu(hidden), weight, bias)


def _eager_autograd(*tensors: Optional[torch.Tensor]) -> bool:
    tracing = (torch.compiler.is_compiling() or torch.jit.is_tracing()
               or torch.compiler.is_exporting())
    return (not tracing and torch.is_grad_enabled()
            and any(t is not None and t.requires_grad for t in tensors))


def _scaled_normalize(x, scale):
    # |x| clamped before the root, so that where autograd differentiates these ops (traced
    # graphs) a zero row (padding's k) gets a zero gradient, not 0 * inf
    norm = torch.linalg.vecdot(x, x).unsqueeze(-1).clamp_min(NORMALIZE_EPS ** 2).sqrt()
    return (x * (scale / norm) if scale is not None else x / norm), norm


class _ScaledNormalize(torch.autograd.Function):
    """``y = s * x / max(|x|, eps)``; backward from ``y``, the norm and ``s``: with
    ``u = y / s``, ``dx = s / |x| * (dy - u (u . dy))`` where ``|x| > eps``, and 0 where the
    norm was clamped; ``ds = sum(u . dy)`` over what ``s`` was broadcast across.

    A clamped row is a zero k of padding (k has no bias). ``F.normalize`` gives it
    ``s / eps * dy``: about 1e12, which the cast back to fp16 under autocast turns into inf,
    and the qkv weight's gradient ``x^T dx`` into 0 * inf = NaN at every step, whatever the
    loss scale. The row's input is zero, so its gradient reaches no parameter: 0 is the same
    gradient for every parameter, without the overflow."""

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
            grad_x = torch.where(norm > NORMALIZE_EPS, (s / norm) * (grad - u * u_dot_grad), 0)
        if scale is not None and ctx.needs_input_grad[1]:
            grad_scale = u_dot_grad.sum_to_size(scale.shape)
        return grad_x, grad_scale


class _GeluLinear(torch.autograd.Function):
    """Keeps GELU's input and recomputes its output in backward (for the weight gradient).
    The product runs in the autocast type under autocast, as ``F.linear`` does."""

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
