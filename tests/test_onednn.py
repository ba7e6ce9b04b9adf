"""Linear layers as oneDNN calls on packed weights (CPU inference): the plain ops' values, in
the autocast type; the packed weights follow every change of the weights; the plain ops
wherever autograd records."""
import copy
import io

import pytest
import torch
import torch.nn.functional as F

from mmswinv2 import SwinTransformerV2
from mmswinv2.models import onednn
from mmswinv2.models.onednn import linear, linear_gelu

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
        assert relative_error(linear(x, w, b), F.linear(x, w, b)) < 1e-6
        assert relative_error(linear(x, w, None), F.linear(x, w)) < 1e-6
    with pytest.raises(ValueError, match="activation must be 'none' or 'gelu'"):
        linear(x, w, b, 'relu')


def test_the_packed_weight_is_reused_until_the_weight_changes():
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


def test_writes_through_data_are_seen_after_eval():
    """MMEngine's EMA hook swaps weights through ``.data`` (no version change), then its loops
    call ``eval()``: the backbone's outputs follow the swapped weights. A model with packed
    weights can still be copied and saved (the packed copies are not part of its state)."""
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
