"""Linear layers as oneDNN calls on packed weights, or fp32 products in MKL's GEMM (CPU
inference): the plain ops' values, in the autocast type, whichever library runs them; the
packed weights follow every change of the weights; the plain ops wherever autograd
records."""
import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from mmswinv2 import SwinTransformerV2
from mmswinv2.models import onednn
from mmswinv2.models.onednn import linear, linear_gelu

from helpers import randomize_
from test_precision_and_reuse import AUTOCAST_BOUNDS, SMALL

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(),
                                reason='this torch build has no oneDNN: the plain ops run')


def inputs():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(2, 5, 7, 96, generator=g), torch.randn(384, 96, generator=g) * 0.1,
            torch.randn(384, generator=g))


def relative_error(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


@pytest.fixture(params=['oneDNN', 'MKL'])
def fp32_library(request, monkeypatch):
    """Which library runs the fp32 products, forced either way on any CPU (this one picks by
    its instruction set, see ``onednn.mkl_fp32_products``)."""
    monkeypatch.setattr(onednn, 'mkl_fp32_products', lambda: request.param == 'MKL')
    return request.param


def test_fp32_inference_matches_the_plain_ops(fp32_library):
    x, w, b = inputs()
    with torch.no_grad():
        assert relative_error(linear_gelu(x, w, b), F.gelu(F.linear(x, w, b))) < 1e-6
        assert relative_error(linear_gelu(x, w, None), F.gelu(F.linear(x, w))) < 1e-6
        assert relative_error(linear(x, w, b), F.linear(x, w, b)) < 1e-6
        assert relative_error(linear(x, w, None), F.linear(x, w)) < 1e-6
    with pytest.raises(ValueError, match="activation must be 'none' or 'gelu'"):
        linear(x, w, b, 'relu')


def test_the_packed_weight_is_reused_until_the_weight_changes(monkeypatch):
    monkeypatch.setattr(onednn, 'mkl_fp32_products', lambda: False)  # packed on every CPU
    x, w, b = inputs()
    w = torch.nn.Parameter(w)
    with torch.no_grad():
        first = onednn.packed_weight(w, torch.float32)
        assert onednn.packed_weight(w, torch.float32) is first
        w.mul_(-2)  # in place: the version counter moves
        assert relative_error(linear(x, w, b), F.linear(x, w, b)) < 1e-6
        w.data = torch.randn(384, 96)  # new storage
        assert relative_error(linear(x, w, b), F.linear(x, w, b)) < 1e-6
    key = id(w)
    del w
    assert key not in onednn._packed  # the entry went with the weight


def test_writes_through_data_are_seen_after_eval(monkeypatch):
    """MMEngine's EMA hook swaps weights through ``.data`` (no version change), then its loops
    call ``eval()``: the backbone's outputs follow the swapped weights. A model with packed
    weights can still be copied and saved (the packed copies are not part of its state)."""
    monkeypatch.setattr(onednn, 'mkl_fp32_products', lambda: False)  # packed on every CPU
    model = SwinTransformerV2(arch=dict(embed_dims=32, depths=[1, 1], num_heads=[2, 4]),
                              window_size=4, out_indices=(0, 1)).eval()
    other = copy.deepcopy(model)
    for p in other.parameters():
        p.data.normal_(0, 0.1, generator=torch.Generator().manual_seed(p.numel()))
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(x)  # packs the weights
        for p, q in zip(model.parameters(), other.parameters()):
            p.data.copy_(q.data)
        model.eval()
        for a, b in zip(model(x), other(x), strict=True):
            assert torch.equal(a, b)
    copy.deepcopy(model)
    torch.save(model, io.BytesIO())


@pytest.fixture(params=['this CPU', 'emulated, oneDNN', 'emulated, MKL'])
def bf16_kernels(request, monkeypatch):
    """bf16 as this CPU runs it (oneDNN's bf16 kernels where it has them, else emulated), and
    as fp32 products of bf16 values, forced (what CPUs without bf16 instructions run), in
    oneDNN's and in MKL's fp32 products."""
    if request.param.startswith('emulated'):
        monkeypatch.setattr(onednn, 'bf16_kernels', lambda: False)
        monkeypatch.setattr(onednn, 'mkl_fp32_products', lambda: request.param.endswith('MKL'))
    return request.param


class ProductTypes(TorchDispatchMode):
    """Records the types of the operands of every matrix product run inside it."""
    PRODUCTS = ('addmm', 'mm', 'bmm', '_linear_pointwise')

    def __init__(self):
        super().__init__()
        self.types = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.__name__.split('.')[0] in self.PRODUCTS:
            self.types.update(a.dtype for a in args[:3] if isinstance(a, torch.Tensor))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize('library', ['oneDNN', 'MKL'])
def test_emulated_bf16_runs_fp32_products(library, monkeypatch):
    """Without bf16 kernels the products take fp32 operands (the bf16-rounded values), also
    under autocast, which would otherwise send ``F.linear`` back to the slow bf16 loop."""
    monkeypatch.setattr(onednn, 'bf16_kernels', lambda: False)
    monkeypatch.setattr(onednn, 'mkl_fp32_products', lambda: library == 'MKL')
    x, w, b = inputs()
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16), ProductTypes() as seen:
        out = linear_gelu(x, w, b)
    assert out.dtype == torch.bfloat16
    assert seen.types == {torch.float32}


def test_bf16_autocast_runs_in_bf16_like_the_plain_ops(bf16_kernels):
    """The autocast type, and PyTorch's own bf16 values within bf16's 8 bits; the emulated
    products equal, to float64 rounding, the exact products of the bf16-rounded operands
    rounded to bf16 (what a bf16 kernel with fp32 sums computes)."""
    x, w, b = inputs()
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        ours, plain = linear_gelu(x, w, b), F.gelu(F.linear(x, w, b))
        ours_linear = linear(x, w, b)
    assert ours.dtype == plain.dtype == ours_linear.dtype == torch.bfloat16
    assert relative_error(ours, plain) < 2 ** -7  # bf16 keeps 8 bits
    exact = F.linear(*(t.bfloat16().double() for t in (x, w, b)))
    assert relative_error(ours_linear, exact.bfloat16()) <= 2 ** -8  # one rounding apart
    assert relative_error(ours, F.gelu(exact).bfloat16()) <= 2 ** -8


def test_bf16_attention_product_is_the_bf16_product(bf16_kernels):
    """``weights @ v`` in bf16 (CPU inference): bf16 out, one rounding from the exact product
    of the bf16 values; where autograd records, the plain product."""
    g = torch.Generator().manual_seed(1)
    a = torch.rand(6, 3, 64, 64, generator=g).softmax(-1).bfloat16()
    v = torch.randn(6, 3, 64, 32, generator=g).bfloat16()
    with torch.no_grad():
        ours = onednn.matmul(a, v)
    assert ours.dtype == torch.bfloat16
    assert relative_error(ours, (a.double() @ v.double()).bfloat16()) <= 2 ** -8
    v.requires_grad_()
    assert torch.equal(onednn.matmul(a, v), a @ v)


def test_a_bf16_backbone_is_close_to_the_fp32_one(bf16_kernels):
    """SwinV2 with every parameter randomised, under bf16 autocast: each stage within
    ``AUTOCAST_BOUNDS`` (tests/test_precision_and_reuse.py) of the fp32 outputs."""
    model = randomize_(SwinTransformerV2(arch=SMALL, window_size=4, drop_path_rate=0.),
                       seed=1).eval()
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            outputs = model(x)
    errors = [relative_error(ours, ref) for ours, ref in zip(outputs, reference, strict=True)]
    assert all(o.dtype == torch.bfloat16 for o in outputs)
    assert max(errors) <= AUTOCAST_BOUNDS[torch.bfloat16], errors


def test_where_autograd_records_the_plain_ops_run():
    x, w, b = inputs()
    w.requires_grad_()
    out = linear_gelu(x, w, b)
    assert out.grad_fn is not None
    out.sum().backward()
    assert w.grad is not None
