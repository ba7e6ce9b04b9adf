"""Every private PyTorch API mmswinv2 uses, in one place, each checked before use.

- ``torch.ops.mkldnn._reorder_linear_weight`` and ``torch.ops.mkldnn._linear_pointwise``: a
  linear layer as one oneDNN call on a weight reordered once into oneDNN's blocked layout,
  the bias and an optional GELU fused (the pair Inductor emits for frozen CPU graphs).
  ``F.linear`` instead repacks the weight and copies the bias into the output on every call.
- ``Tensor._version``: the version counter that in-place writes bump.

:func:`packed_linear_supported` compares the ops' schemas with the ones written here once per
process; if torch changed them (or oneDNN is absent), one warning says so and
:mod:`.linear` runs ``F.linear`` instead.
"""
import functools
import logging
from typing import Optional

import torch

#: The schemas this module calls (torch 2.13).
SCHEMAS = {
    '_reorder_linear_weight': 'mkldnn::_reorder_linear_weight(Tensor self, int? batch_size=None) '
                              '-> Tensor Y',
    '_linear_pointwise': 'mkldnn::_linear_pointwise(Tensor X, Tensor W, Tensor? B, str attr, '
                         'Scalar?[] scalars, str? algorithm) -> Tensor Y',
}


def schema_mismatches() -> list:
    """``(op, expected, found)`` for each op of :data:`SCHEMAS` whose schema differs."""
    found = []
    for name, expected in SCHEMAS.items():
        op = getattr(torch.ops.mkldnn, name, None)
        schema = str(op.default._schema) if op is not None else 'missing'
        if schema != expected:
            found.append((name, expected, schema))
    return found


@functools.lru_cache(maxsize=None)
def packed_linear_supported() -> bool:
    """Whether oneDNN is there and the two ops have the schemas written here (else, once, a
    warning naming the op, and False)."""
    if not torch.backends.mkldnn.is_available():
        return False
    mismatches = schema_mismatches()
    if mismatches:
        from mmengine.logging import print_log
        name, expected, schema = mismatches[0]
        print_log(f'mmswinv2.cpu: torch {torch.__version__} changed torch.ops.mkldnn.{name} '
                  f'(expected "{expected}", found "{schema}"): CPU inference runs its linear '
                  f'layers with F.linear.', logger='current', level=logging.WARNING)
        return False
    return True


def bf16_supported() -> bool:
    """Whether oneDNN has bf16 kernels for this CPU (AVX512-BF16, AMX)."""
    return torch.ops.mkldnn._is_mkldnn_bf16_supported()


def reorder_linear_weight(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` (out, in) in oneDNN's blocked layout for :func:`linear_pointwise`."""
    return torch.ops.mkldnn._reorder_linear_weight(weight)


def linear_pointwise(x: torch.Tensor, packed: torch.Tensor, bias: Optional[torch.Tensor],
                     gelu: bool) -> torch.Tensor:
    """``x @ W.T + bias``, then exact GELU if ``gelu``, with ``packed`` from
    :func:`reorder_linear_weight`; ``x`` is 2-D, of the packed weight's type."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, 'gelu' if gelu else 'none', [],
                                              'none')


def version(tensor: torch.Tensor) -> int:
    """The tensor's version counter, bumped by every in-place write except through ``.data``."""
    return tensor._version
