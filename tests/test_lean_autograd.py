"""The lean backward of ``lean_autograd``: gradients equal what autograd gives for the plain ops
(and, through the whole backbone, HF transformers' gradients), while less is kept for backward."""
import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck
from transformers import Swinv2Backbone, Swinv2Config

import mmswinv2.models.lean_autograd as lean
from mmswinv2 import SwinTransformerV2
from mmswinv2.checkpoints import convert_state_dict

from helpers import randomize_, raw_stage_outputs

SMALL = dict(embed_dims=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8))


def f64(*shape, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).requires_grad_()


def test_scaled_normalize_gradient_is_the_derivative():
    x, scale = f64(3, 4, 5, 8), f64(4, 1, 1, seed=1).detach().exp().requires_grad_()
    assert gradcheck(lean.scaled_normalize, (x, scale))
    assert gradcheck(lean.scaled_normalize, (f64(3, 4, 5, 8, seed=2),))


def test_scaled_normalize_matches_f_normalize_and_zero_vectors_get_no_gradient():
    """Values as F.normalize's; gradients too, except where the norm is clamped at eps (a zero
    k of padding): F.normalize's dy / eps there (1e12, inf once cast to fp16) is 0 here."""
    x = f64(2, 4, 6, 8)
    with torch.no_grad():
        x[0, :, 2] = 0  # e.g. the k of a zero padding token (k has no bias)
        x[1, 1, 3] = 1e-14
    scale = f64(4, 1, 1, seed=1).detach().exp().requires_grad_()
    grad = f64(2, 4, 6, 8, seed=3).detach()
    ours = lean.scaled_normalize(x, scale)
    theirs = F.normalize(x, dim=-1) * scale
    torch.testing.assert_close(ours, theirs, rtol=1e-15, atol=0)  # (scale applied to the norm)
    ours_grads = torch.autograd.grad(ours, (x, scale), grad)
    theirs_grads = list(torch.autograd.grad(theirs, (x, scale), grad))
    clamped = x.detach().norm(dim=-1, keepdim=True) <= lean.NORMALIZE_EPS
    assert clamped.sum() == 5 and theirs_grads[0][clamped.expand_as(x)].abs().min() > 1e9
    theirs_grads[0] = theirs_grads[0].masked_fill(clamped, 0)
    for a, b in zip(ours_grads, theirs_grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)


def test_padding_gives_finite_gradients_under_fp16_autocast():
    """Windows with padding (zero k rows) under fp16 autocast, the loss scaled as by a loss
    scaler: every parameter's gradient is finite (F.normalize's made the qkv weight's NaN)."""
    from mmswinv2.models.attention import WindowAttentionV2
    torch.manual_seed(0)
    attn = WindowAttentionV2(16, num_heads=2)
    x = torch.randn(3, 16, 16)
    x[:, 12:] = 0  # the last row of each 4 x 4 window is padding
    with torch.autocast('cpu', dtype=torch.float16):
        out = attn.attend(x, attn.position_bias((4, 4)), None)
    (out.float().sum() * 2.**10).backward()  # scaled, as under a loss scaler
    assert all(torch.isfinite(p.grad).all() for p in attn.parameters() if p.grad is not None)


def test_gelu_linear_gradient_is_the_derivative():
    hidden, weight, bias = f64(2, 7, 12), f64(5, 12, seed=1), f64(5, seed=2)
    assert gradcheck(lean.gelu_linear, (hidden, weight, bias))
    assert gradcheck(lean.gelu_linear, (hidden, weight, None))


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_gelu_linear_under_autocast_matches_the_plain_ops(dtype):
    """Under autocast the linear layer runs in the autocast type, as F.linear does; the
    gradients equal autograd's through the plain ops up to the order of the sums."""
    hidden = torch.randn(4, 9, 16).to(dtype).requires_grad_()  # what an autocast fc1 returns
    fc2 = torch.nn.Linear(16, 6)
    grad = torch.randn(4, 9, 6).to(dtype)
    results = []
    for op in (lean.gelu_linear, lambda h, w, b: F.linear(F.gelu(h), w, b)):
        with torch.autocast('cpu', dtype=dtype):
            out = op(hidden, fc2.weight, fc2.bias)
        results.append((out, *torch.autograd.grad(out, (hidden, fc2.weight, fc2.bias), grad)))
    for a, b in zip(*results):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)


def test_backbone_gradients_match_hf():
    """Every parameter's gradient and the input's, through HF transformers' own backward, in
    float64 (padded maps, shifted windows, logit scales past the clamp). Every stage map is
    larger than the window, where HF's window rule and ours agree (see test_parity_hf.py)."""
    config = Swinv2Config(image_size=[172, 236], patch_size=4, window_size=4, embed_dim=16,
                          depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], drop_path_rate=0.,
                          out_features=['stage1', 'stage2', 'stage3', 'stage4'])
    hf = randomize_(Swinv2Backbone(config), seed=5).double().train()
    ours = SwinTransformerV2(arch=SMALL, window_size=4, drop_path_rate=0.).double().train()
    ours.load_state_dict(convert_state_dict(hf.state_dict(), 'hf'), strict=False)
    x = torch.randn(2, 3, 172, 236, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    weights = None

    def loss_and_grads(model, outputs_of):
        nonlocal weights
        xi = x.clone().requires_grad_()
        outs = outputs_of(model, xi)
        if weights is None:
            g = torch.Generator().manual_seed(1)
            weights = [torch.randn(o.shape, generator=g, dtype=o.dtype) for o in outs]
        loss = sum((o * w).sum() for o, w in zip(outs, weights))
        params = dict(model.named_parameters())
        grads = torch.autograd.grad(loss, [xi, *params.values()], allow_unused=True)
        return grads[0], {n: g for n, g in zip(params, grads[1:]) if g is not None}

    hf_input_grad, hf_grads = loss_and_grads(hf, lambda m, xi: list(m(xi).feature_maps))
    our_input_grad, our_grads = loss_and_grads(
        ours, lambda m, xi: raw_stage_outputs(m, xi, grad=True)[0])
    expected = dict(convert_state_dict(hf_grads, 'hf'), input=hf_input_grad)
    ours_all = dict(our_grads, input=our_input_grad)
    assert set(expected) == set(ours_all)  # all but our output norms, which HF lacks
    worst = 0.0
    for name, grad in expected.items():
        # float64 rounding, relative to the largest entry (sums of thousands of terms)
        error = (ours_all[name] - grad).abs().max() / grad.abs().max()
        worst = max(worst, error.item())
        assert error <= 1e-10, (name, error.item())
    print(f'largest gradient error relative to HF: {worst:.1e}')


def saved_bytes(model, x):
    """Bytes of distinct storages autograd keeps for the backward of ``model(x)``, parameters
    aside."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in parameters:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(storages.values())


def test_backward_keeps_less_than_plain_autograd(monkeypatch):
    """Measured: 0.746 of what autograd keeps through the plain ops; without the lean GELU
    0.91, without the lean normalisation 0.84 (GELU's output and the qkv projection are what
    goes). Bytes, not timings: the same on every machine."""
    model = randomize_(SwinTransformerV2(arch='tiny', drop_path_rate=0.), seed=0).train()
    x = torch.randn(1, 3, 128, 192)
    lean_bytes = saved_bytes(model, x)
    monkeypatch.setattr(lean, '_eager_autograd', lambda *tensors: False)
    plain_bytes = saved_bytes(model, x)
    print(f'saved for backward: {lean_bytes / plain_bytes:.4f} of plain autograd')
    assert lean_bytes <= 0.8 * plain_bytes, (lean_bytes, plain_bytes)
