"""Inference reuse of derived tensors (position bias, qkv bias) and its invalidation; precision
under autocast (the logits in fp32); no subnormal floats in the CPU's fp32 products, forward
or backward."""
import json

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import mmswinv2.models.attention as attention
import mmswinv2.models.lean_autograd as lean
from mmswinv2 import SwinTransformerV2

from helpers import attention_path, load_tool, randomize_, subnormal

SMALL = dict(embed_dims=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8))


def small_model(seed=0, **kwargs):
    return randomize_(SwinTransformerV2(arch=SMALL, drop_path_rate=0., **kwargs), seed=seed)


def outputs(model, x, grad=False):
    with torch.set_grad_enabled(grad):
        return [o.detach() for o in model(x)]


def assert_same(a, b):
    """Outputs of an inference forward ``a`` against a forward where autograd records ``b``
    (which reuses nothing). Reuse is exact, but the two are different fp32 evaluations: oneDNN
    on packed weights and the compiled attention kernel in inference, ``F.linear`` and
    PyTorch's ops where autograd records, whose rounding this randomised model (logit scales
    up to 100) amplifies to 2.7e-5 of the largest output (measured). A stale position or qkv
    bias moves the outputs it reaches by 4.7e-2 to 0.76 of the largest (measured: the changes
    of the test below), far more than this bound."""
    for p, q in zip(a, b, strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-4 * q.abs().max().item())


def reuse_entries(model):
    return sum(len(m._reuse) for m in model.modules()
               if isinstance(m, attention.WindowAttentionV2))


@pytest.fixture
def x():
    return torch.randn(2, 3, 100, 132, generator=torch.Generator().manual_seed(0))


def test_reused_and_recomputed_paths_are_equal(x):
    model = small_model().eval()
    fresh = outputs(model, x, grad=True)  # parameters require grad: nothing is reused
    assert reuse_entries(model) == 0
    first = outputs(model, x)
    # position bias, qkv bias and whether the floor can bind (see below), of each of 8 blocks
    assert reuse_entries(model) == 3 * 8
    assert_same(first, fresh)
    for a, b in zip(outputs(model, x), first, strict=True):  # from the reused tensors
        assert torch.equal(a, b)


def test_an_in_place_weight_change_after_an_eval_forward_is_seen(x):
    model = small_model().eval()
    outputs(model, x)
    with torch.no_grad():
        model.stages[0].blocks[1].attn.cpb_mlp[2].weight.mul_(-1)  # the position bias
        model.stages[2].blocks[0].attn.v_bias.add_(0.5)  # the qkv bias
    expected = outputs(model, x, grad=True)
    assert_same(outputs(model, x), expected)


def test_load_state_dict_invalidates(x):
    model, other = small_model(seed=0).eval(), small_model(seed=1).eval()
    outputs(model, x)
    model.load_state_dict(other.state_dict())
    assert_same(outputs(model, x), outputs(other, x, grad=True))


def test_train_clears_what_was_kept_and_training_keeps_nothing(x):
    model = small_model().eval()
    outputs(model, x)
    assert reuse_entries(model) > 0
    model.train()
    assert reuse_entries(model) == 0
    with torch.no_grad():
        model(x)
    assert reuse_entries(model) == 0


def test_window_and_pretrained_window_changes_are_seen(x):
    model = small_model(window_size=8).eval()
    outputs(model, x)
    model.set_pretrained_window_sizes((4, 4, 4, 4))
    reference = small_model(window_size=8, pretrained_window_sizes=4).eval()
    assert_same(outputs(model, x), outputs(reference, x, grad=True))


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_autocast_outputs_are_finite_and_in_the_input_layout(x, dtype):
    model = small_model().eval()
    with torch.no_grad(), torch.autocast('cpu', dtype=dtype):
        outs = model(x)
    assert all(torch.isfinite(o.float()).all() for o in outs)
    assert [tuple(o.shape) for o in outs] == [tuple(o.shape) for o in outputs(model, x)]


#: Bounds on max |autocast - fp32| / max |fp32| per stage, SwinV2-T with every parameter
#: randomised (logit scales up to ln 120, past the ln 100 clamp), 2 x 256 x 256. Measured on an
#: Intel Xeon (AVX-512 BF16 / AMX): bf16 0.10-0.19, fp16 0.015-0.024; HF transformers on the same
#: weights under the same autocast 0.15-0.22 and 0.017-0.040. The bounds leave ~1.35x for other
#: CPUs' kernels; what they guard is the order of magnitude (bf16 keeps 8 bits).
AUTOCAST_BOUNDS = {torch.bfloat16: 0.25, torch.float16: 0.04}


@pytest.mark.parametrize('dtype', list(AUTOCAST_BOUNDS))
def test_autocast_stage_error_against_fp32_and_why_the_logits_are_fp32(dtype, monkeypatch):
    model = randomize_(SwinTransformerV2(arch='tiny', drop_path_rate=0.), seed=1).eval()
    x = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    reference = outputs(model, x)

    def relative_errors():
        with torch.no_grad(), torch.autocast('cpu', dtype=dtype):
            outs = model(x)
        return [((o.float() - r).abs().max() / r.abs().max()).item()
                for o, r in zip(outs, reference)]
    errors = relative_errors()  # bf16: the compiled kernel's (cpu_kernel)
    assert max(errors) <= AUTOCAST_BOUNDS[dtype], errors
    attention_path(monkeypatch, 'explicit')  # PyTorch's ops, whose logits' type can change
    ops_errors = relative_errors()
    assert max(ops_errors) <= AUTOCAST_BOUNDS[dtype], ops_errors
    # The same model with its logits in the autocast type strays further (measured bf16:
    # 0.18-0.28 per stage against 0.10-0.19).
    monkeypatch.setattr(attention, '_logit_dtype', lambda d: d)
    model.train().eval()  # drop the fp32 position biases kept from the runs above
    low = relative_errors()
    assert max(sum(errors), sum(ops_errors)) < sum(low), (errors, ops_errors, low)


@pytest.mark.parametrize('path', ['explicit', 'kernel', 'fused'])
def test_no_subnormal_floats_reach_the_fp32_products_on_the_cpu(path, monkeypatch):
    """Masked pairs' softmax weights (~e^-100) are subnormal, and so is the attention output of
    padded tokens whose region holds only zero-valued tokens; x86 handles them in microcode
    (measured on an Intel Xeon: a shifted block's softmax 2.4-5.5x, its weights @ v 15x, its output
    projection 19-37x slower). The explicit path floors the logits, so that no weight is
    subnormal; the compiled kernel floors them too, and its exp (at::vec's) gives 0 below
    fp32's normal range in any case, so that its output (the projection's input) holds none;
    SDPA's fused kernel's weights never leave it, so its output is flushed instead."""
    fused = path == 'fused'
    kernel_calls = attention_path(monkeypatch, 'kernel' if path == 'kernel' else 'explicit')
    model = SwinTransformerV2(arch='tiny', drop_path_rate=0., fused_attention=fused)
    model.init_weights()  # q / v biases start at 0
    model.eval()
    x = torch.randn(1, 3, 200, 336, generator=torch.Generator().manual_seed(0))  # padded maps

    projections = {id(b.attn.proj.weight) for s in model.stages for b in s.blocks}
    linear, softmax = attention.linear, attention._softmax

    def seen_linear(x, weight, *args):
        if id(weight) in projections:
            seen.append(x.clone())
        return linear(x, weight, *args)

    def seen_softmax(logits, floor):
        seen.append(softmax(logits, floor and not unfloored).clone())
        return seen[-1]

    def masked_windows_floor(logits):  # where only the masked windows are floored
        return logits if unfloored else floor_(logits)
    floor_ = attention.raise_to_floor_
    monkeypatch.setattr(attention, 'linear', seen_linear)
    monkeypatch.setattr(attention, '_softmax', seen_softmax)
    monkeypatch.setattr(attention, 'raise_to_floor_', masked_windows_floor)
    seen, unfloored = [], False

    def subnormals():
        seen.clear()
        with torch.no_grad():
            model(x)
        # every block's projection input (and softmax output, on the explicit path), in pieces
        assert len(seen) >= len(projections) * (2 if path == 'explicit' else 1)
        return sum(subnormal(t).sum().item() for t in seen)
    assert subnormals() == 0
    if fused:
        # whether the fused kernel's output holds subnormals depends on the CPU's kernels (with
        # ATEN_CPU_CAPABILITY=avx2 this input gives none): check that every output is flushed
        flushed = []
        flush = attention.flush_subnormals
        monkeypatch.setattr(attention, 'flush_subnormals', lambda t: flushed.append(t) or flush(t))
        subnormals()
        assert len(flushed) == len(seen) and all(t.dtype == torch.float32 for t in flushed)
    elif path == 'kernel':
        assert len(kernel_calls) >= len(projections)
    else:
        unfloored = True
        assert subnormals() > 0  # what the floor removes


#: The products of a training step's backward that subnormal gradients reach without each
#: flush: the qkv projection's (input and weight gradients) and the logits' (q . k and its
#: gradients).
UNFLUSHED = {'qkv gradient': torch.ops.aten.mm, 'logits gradient': torch.ops.aten.bmm}


@pytest.mark.parametrize('unflushed', [None, *UNFLUSHED])
def test_no_subnormal_floats_reach_the_fp32_products_of_a_training_step_on_the_cpu(
        unflushed, monkeypatch):
    """The backward meets the masked pairs' tiny weights as subnormal gradients: of the logits
    (``w (g - w . g)``) and of ``v`` (``w^T g``); each is set to 0 where it arises. Intel Xeon,
    800x1344: stage 3's qkv input gradient 8x slower than its FLOPs allow without."""
    # PyTorch's default initialisation: with init_weights' smaller weights (std 0.02) this
    # small input meets no subnormal gradient at all
    torch.manual_seed(0)
    model = SwinTransformerV2(arch='tiny', drop_path_rate=0.).train()
    x = torch.randn(1, 3, 200, 336, generator=torch.Generator().manual_seed(0))  # padded maps
    if unflushed == 'qkv gradient':
        monkeypatch.setattr(attention, 'flush_subnormal_gradient', lambda t: t)
    elif unflushed == 'logits gradient':
        monkeypatch.setattr(lean, '_flush_', lambda t: t)
    aten = torch.ops.aten
    found = dict.fromkeys((aten.mm, aten.bmm, aten.addmm, aten.baddbmm), 0)

    class SubnormalOperands(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket in found:
                found[func.overloadpacket] += sum(
                    subnormal(a).sum().item() for a in args
                    if isinstance(a, torch.Tensor) and a.dtype == torch.float32)
            return func(*args, **(kwargs or {}))
    loss = model(x)[-1].mean()  # a loss's small gradients, as training has
    with SubnormalOperands():  # on the CPU the backward runs in this thread
        loss.backward()
    if unflushed is None:
        assert not any(found.values()), found
    else:
        assert found[UNFLUSHED[unflushed]] > 0, found


def attention_modules(model):
    return [m for m in model.modules() if isinstance(m, attention.WindowAttentionV2)]


def model_with_logit_scales(scales):
    """SMALL in eval mode with its logit scales ``'initial'`` (ln 10), ``'randomised'`` (ln 5 to
    ln 120) or ``'clamped'`` (all at ln 100)."""
    if scales == 'initial':
        model = SwinTransformerV2(arch=SMALL, drop_path_rate=0.)
        model.init_weights()
    else:
        model = small_model()
    model.eval()
    if scales == 'clamped':
        with torch.no_grad():
            for module in attention_modules(model):
                module.logit_scale.fill_(attention.MAX_LOGIT_SCALE)
    return model


@pytest.mark.parametrize('scales', ['initial', 'randomised', 'clamped'])
def test_the_floor_is_left_out_only_where_it_cannot_bind(scales, monkeypatch):
    """In CPU inference only the masked windows are floored in a block whose unmasked logits
    cannot spread over 60 (``_floor_can_bind``: at most twice the logit scale plus the position
    bias's spread). Checked: the bound holds for the logits actually seen; the outputs are those
    of flooring every window, bit for bit; initial scales (ln 10) leave every block out, logit
    scales at the ln 100 clamp none, randomised ones (ln 5 to ln 120) some."""
    attention_path(monkeypatch, 'explicit')  # the kernel's floor modes: the next test
    model = model_with_logit_scales(scales)
    x = torch.randn(2, 3, 100, 132, generator=torch.Generator().manual_seed(0))  # padded, shifted

    spreads = {}  # module -> largest spread of an unmasked row of logits, the floor left out
    explicit = attention.WindowAttentionV2._explicit

    def seen_explicit(self, q, k, v, bias, mask, rows=None, floor=False, masked_floor_only=False):
        if masked_floor_only:
            logits = q @ k.transpose(-2, -1) + bias
            spread = (logits.amax(-1, keepdim=True) - logits).max().item()
            spreads[self] = max(spreads.get(self, 0.), spread)
        return explicit(self, q, k, v, bias, mask, rows, floor, masked_floor_only)
    monkeypatch.setattr(attention.WindowAttentionV2, '_explicit', seen_explicit)
    with torch.no_grad():
        partly = model(x)
    assert max(spreads.values(), default=0.) < -lean.LOGIT_FLOOR
    left_out = len(spreads) / len(attention_modules(model))
    assert {'initial': left_out == 1, 'clamped': left_out == 0,
            'randomised': 0 < left_out < 1}[scales], left_out

    monkeypatch.setattr(attention.WindowAttentionV2, '_floor_can_bind', lambda *_: True)
    with torch.no_grad():
        for a, b in zip(partly, model(x), strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize('scales', ['initial', 'randomised', 'clamped'])
def test_the_kernel_floors_the_windows_the_pytorch_ops_floor(scales, monkeypatch):
    """The compiled kernel gets the same choice (floor mode 1: the masked windows only; 2:
    every window) per block as the ops above, and its outputs are those of flooring every
    window, bit for bit."""
    model = model_with_logit_scales(scales)
    x = torch.randn(2, 3, 100, 132, generator=torch.Generator().manual_seed(0))  # padded, shifted
    modes = attention_path(monkeypatch, 'kernel')
    with torch.no_grad():
        partly = model(x)
    expected = {'initial': {1}, 'clamped': {2}, 'randomised': {1, 2}}[scales]
    assert set(modes) == expected, modes
    monkeypatch.setattr(attention.WindowAttentionV2, '_floor_can_bind', lambda *_: True)
    modes.clear()
    with torch.no_grad():
        for a, b in zip(partly, model(x), strict=True):
            assert torch.equal(a, b)
    assert set(modes) == {2}


@pytest.mark.parametrize('path', ['explicit', 'kernel'])
def test_a_logit_scale_raised_after_an_eval_forward_floors_every_window(x, path, monkeypatch):
    model = SwinTransformerV2(arch=SMALL, drop_path_rate=0.)
    model.init_weights()  # logit scales ln 10: the floor is left out of the unmasked windows
    model.eval()
    kernel_modes, softmax_floors = attention_path(monkeypatch, path), []
    softmax = attention._softmax
    monkeypatch.setattr(attention, '_softmax', lambda logits, floor: (
        softmax_floors.append(floor) or softmax(logits, floor)))

    def every_window_floored():  # per attention call
        if path == 'kernel':
            return [mode == attention.cpu_kernel.FLOOR_ALL for mode in kernel_modes]
        return softmax_floors
    with torch.no_grad():
        model(x)
        assert every_window_floored() and not any(every_window_floored())
        for module in attention_modules(model):
            module.logit_scale.fill_(attention.MAX_LOGIT_SCALE)
        kernel_modes.clear()
        softmax_floors.clear()
        model(x)
    assert every_window_floored() and all(every_window_floored())


@pytest.mark.parametrize('floor', [False, True])
def test_softmax_writes_over_the_logits_only_where_autograd_does_not_record(floor):
    logits = torch.randn(6, 2, 16, 16, generator=torch.Generator().manual_seed(0)) * 30
    expected = logits.softmax(dim=-1)
    if floor:
        rowmax = logits.amax(-1, keepdim=True)
        assert (logits < rowmax + lean.LOGIT_FLOOR).any()  # logits below the floor
        expected = torch.maximum(logits, rowmax + lean.LOGIT_FLOOR).softmax(dim=-1)
        assert expected.min() > torch.finfo(torch.float32).tiny  # no subnormal weights
    with torch.no_grad():
        given = logits.clone()
        weights = attention._softmax(given, floor)
    assert weights.data_ptr() == given.data_ptr()  # in place: no fresh tensor
    assert torch.equal(weights, expected)
    recorded = logits.clone().requires_grad_()
    weights = attention._softmax(recorded, floor)
    assert weights.data_ptr() != recorded.data_ptr() and weights.grad_fn is not None
    assert torch.equal(weights, expected)
    assert torch.equal(recorded, logits)  # the logits are still those autograd saw
    weights.pow(2).sum().backward()
    plain = logits.clone().requires_grad_()
    plain.softmax(dim=-1).pow(2).sum().backward()
    if floor:  # softmax's gradient, at weights that moved by at most 16 e^-60
        torch.testing.assert_close(recorded.grad, plain.grad, rtol=0, atol=1e-20)
        assert (recorded.grad != plain.grad).any()  # the floor is not a no-op here
    else:
        assert torch.equal(recorded.grad, plain.grad)


#: tools/analysis/precision.py's rows, against HF in float64: fp32 must be fp32 rounding (a
#: TF32 convolution on CUDA measured 1.5e-2), the autocast rows the order of their type.
PRECISION_TOOL_BOUNDS = dict(fp32=1e-4, fp16=0.1, bf16=0.5)


def test_precision_tool_reports_every_path_against_hf_in_float64(tmp_path):
    tool = load_tool('analysis/precision.py')
    rows = tool.main(['--device', 'cpu', '--batch', '1', '--size', '128',
                      '--json', str(tmp_path / 'precision.json')])
    assert {(r['implementation'], r['attention'], r['dtype']) for r in rows} == {
        (implementation, attention, dtype) for implementation, attention in tool.IMPLEMENTATIONS
        for dtype in ('fp32', 'bf16', 'fp16')}
    for r in rows:
        assert r['finite'], r
        assert len(r['relative_error']) == 4
        assert max(r['relative_error']) <= PRECISION_TOOL_BOUNDS[r['dtype']], r
    with open(tmp_path / 'precision.json') as f:
        assert json.load(f)['rows'] == rows


def test_precision_tool_refuses_sizes_where_hf_windows_differently():
    tool = load_tool('analysis/precision.py')
    with pytest.raises(SystemExit):
        tool.parse_args(['--size', '72', '104'])  # stage 4: 3x4, shorter than the window
