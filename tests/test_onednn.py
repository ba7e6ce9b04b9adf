"""fc1 + GELU in one oneDNN call (CPU inference): the plain ops' values, in the autocast type,
and the plain ops wherever autograd records."""
import pytest
import torch
import torch.nn.functional as F

from mmswinv2.models.onednn import linear_gelu

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(),
                                reason='this torch build has no oneDNN: the plain ops run')


def inputs():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(2, 5, 7, 96, generator=g), torch.randn(384, 96, generator=g) * 0.1,
            torch.randn(384, generator=g))


def relative_error(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def test_fp32_inference_matches_the_plain_ops():
    x, w, b = inputs()
    with torch.no_grad():
        assert relative_error(linear_gelu(x, w, b), F.gelu(F.linear(x, w, b))) < 1e-6
        assert relative_error(linear_gelu(x, w, None), F.gelu(F.linear(x, w))) < 1e-6


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(),
                    reason='no oneDNN bf16 kernels on this CPU: the plain ops run')
def test_bf16_autocast_runs_in_bf16_like_the_plain_ops():
    x, w, b = inputs()
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        ours, plain = linear_gelu(x, w, b), F.gelu(F.linear(x, w, b))
    assert ours.dtype == plain.dtype == torch.bfloat16
    assert relative_error(ours, plain) < 2 ** -7  # bf16 keeps 8 bits


def test_where_autograd_records_the_plain_ops_run():
    x, w, b = inputs()
    w.requires_grad_()
    out = linear_gelu(x, w, b)
    assert out.grad_fn is not None
    out.sum().backward()
    assert w.grad is not None
