"""CPU inference (``mmswinv2.cpu``): the one call that applies it, the seam that applies it by
itself, what the inference blocks compute, what they prepare and when they see a change, and
bad input. (Parity of the CPU path with reference code: every ``assert_matches_reference``
runs it, see parity.py.)"""
import copy
import pickle

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmswinv2 import SwinTransformerV2
from mmswinv2.cpu import (block as cpu_block, is_optimized, optimize_for_cpu_inference,
                          restore, torch_private)
from mmswinv2.cpu.block import InferenceBlock
from mmswinv2.cpu.linear import PreparedLinear
from mmswinv2.models.blocks import SwinBlockV2

from helpers import logged, randomize_

SMALL = dict(embed_dims=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8))


def build(**kwargs):
    return randomize_(SwinTransformerV2(arch=SMALL, window_size=7, drop_path_rate=0., **kwargs),
                      seed=0)


def image(batch=2, hw=(150, 190), seed=0):
    """150x190: padded maps, shifted and clipped windows; 6x7 windows per image at stage 1."""
    return torch.randn(batch, 3, *hw, generator=torch.Generator().manual_seed(seed))


def plain(model):
    """A copy of ``model`` with its own blocks (the model as written)."""
    return restore(copy.deepcopy(model))


def forward(model, x):
    with torch.no_grad():
        return model(x)


def assert_close(ours, expected, rtol):
    """Each output within ``rtol`` of the largest of the expected one."""
    for a, b in zip(ours, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=rtol * b.abs().max().item())


def assert_the_models_function(model, x, autocast=False):
    """``model`` (optimized) computes what the model as written computes on its current
    weights: against the latter's float64 result, within 4x the latter's own error in the
    same type (and 1e-6 of the largest output)."""
    reference = forward(plain(model).double(), x.double())
    with torch.autocast('cpu', torch.bfloat16, enabled=autocast):
        ours, theirs = forward(model, x), forward(plain(model), x)
    for a, b, r in zip(ours, theirs, reference, strict=True):
        assert a.dtype == b.dtype
        own = (b.double() - r).abs().max().item()
        assert (a.double() - r).abs().max().item() <= 4 * own + 1e-6 * r.abs().max().item()


def test_eval_on_the_cpu_swaps_every_block_and_train_gives_them_back():
    model = build()
    params = {name: p for name, p in model.named_parameters()}
    keys = list(model.state_dict())
    model.eval()
    assert is_optimized(model)
    assert not any(isinstance(m, SwinBlockV2) for m in model.modules())
    assert sum(isinstance(m, InferenceBlock) for m in model.modules()) == 8
    assert list(model.state_dict()) == keys
    assert {name: p for name, p in model.named_parameters()} == params  # the same objects
    model.eval()  # again: nothing changes
    assert sum(isinstance(m, InferenceBlock) for m in model.modules()) == 8
    model.train()
    assert not is_optimized(model)
    assert all(type(p) is nn.Parameter for p in model.parameters())
    assert {name: p for name, p in model.named_parameters()} == params
    assert all(m.training for m in model.modules() if isinstance(m, SwinBlockV2))


def test_cpu_inference_false_keeps_the_blocks():
    model = build(cpu_inference=False).eval()
    assert not is_optimized(model)


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32, 'bf16'])
def test_the_inference_blocks_compute_the_models_function(dtype):
    """Against the model as written, on the same weights: float64 agrees to rounding (the
    kernel runs in double too); fp32 and bf16 differ by rounding of the same order as the
    model's own (measured against its float64 result, ``reference error``)."""
    model = build().eval()
    x = image()
    if dtype == torch.float64:
        reference = forward(plain(model).double(), x.double())
        assert_close(forward(copy.deepcopy(model).double(), x.double()), reference, 1e-12)
    else:
        assert_the_models_function(model, x, autocast=dtype == 'bf16')


@pytest.mark.parametrize('piece_bytes', [10_000, 100_000, 2**40])
def test_pieces_give_the_same_outputs(piece_bytes, monkeypatch):
    """Each branch runs on pieces of at most PIECE_BYTES of projections: one window each at
    stage 1 (10 kB), a few (100 kB: pieces starting inside an image and inside a row of
    windows, so the kernel's masks follow the piece's first window) or all at once. The kernel's
    per-window results do not depend on the pieces; the linear layers over fewer rows may round
    differently."""
    model = build().eval()
    x = image()
    expected = forward(model, x)
    monkeypatch.setattr(cpu_block, 'PIECE_BYTES', piece_bytes)
    assert_close(forward(model, x), expected, 1e-5)
    if piece_bytes == 100_000:
        assert len(cpu_block.pieces(2 * 42, 49 * 3 * 16 * 4)) > 1  # stage 1: 6 x 7 windows


@pytest.mark.parametrize('rows,row_bytes', [(0, 8), (1, 2**40), (5, 2**20), (32768, 1152),
                                            (19, 2**24)])
def test_pieces_cover_the_rows_in_as_few_even_ranges_as_the_budget_allows(rows, row_bytes):
    ranges = cpu_block.pieces(rows, row_bytes)
    assert ranges[0][0] == 0 and ranges[-1][1] == rows
    assert all(stop == start for (_, stop), (start, _) in zip(ranges, ranges[1:]))
    lengths = [stop - start for start, stop in ranges]
    assert max(lengths) == 1 or max(lengths) * row_bytes <= cpu_block.PIECE_BYTES
    per_piece = max(1, cpu_block.PIECE_BYTES // row_bytes)
    assert len(ranges) == max(1, -(-rows // per_piece))
    assert max(lengths) - min(lengths) <= 1


def record(function, calls):
    def recorded(*args, **kwargs):
        calls.append(args)
        return function(*args, **kwargs)
    return recorded


@pytest.mark.parametrize('piece_bytes', [1, 2**40])
@pytest.mark.parametrize('hw', [(150, 190), (28, 28)])
def test_the_block_input_is_left_untouched(hw, piece_bytes, monkeypatch):
    """The residual sums are written over the block's own windows, never over the tensor it
    was given (28x28: one window per map, where partitioning is a view of the input)."""
    monkeypatch.setattr(cpu_block, 'PIECE_BYTES', piece_bytes)
    model = build().eval()
    inputs = []
    for module in model.modules():
        if isinstance(module, InferenceBlock):
            module.register_forward_pre_hook(
                lambda module, args: inputs.append((args[0], args[0].clone())))
    forward(model, image(hw=hw))
    assert len(inputs) == 8
    for given, before in inputs:
        assert torch.equal(given, before)


def test_where_autograd_records_or_a_graph_is_traced_the_block_itself_runs(monkeypatch):
    model = build().eval()
    calls = []
    monkeypatch.setattr(SwinBlockV2, 'forward', record(SwinBlockV2.forward, calls))
    forward(model, image())
    assert calls == []
    outs = model(image())  # eval mode, but autograd records: the model's own blocks
    assert len(calls) == 8 and outs[0].requires_grad
    torch.jit.trace(model, image(batch=1, hw=(64, 64)), check_trace=False)
    assert len(calls) == 16


class TestEditsAfterTheSwap:
    """Weights written after ``eval()`` (the swap): every way a user or MMEngine writes them is
    seen by the next forward."""

    def check(self, model, x):
        assert is_optimized(model)
        assert_the_models_function(model, x)

    def edited(self):
        model = build().eval()
        x = image()
        before = forward(model, x)
        return model, x, before

    def test_through_data(self):
        model, x, before = self.edited()
        for name, p in model.named_parameters():
            if 'qkv.weight' in name or 'fc1' in name:
                p.data.mul_(0.5)
        self.check(model, x)
        assert (forward(model, x)[0] - before[0]).abs().max() > 1e-2

    def test_by_replacing_data(self):
        model, x, before = self.edited()
        fc2 = next(m for m in model.modules() if isinstance(m, InferenceBlock)).mlp.fc2
        fc2.weight.data = fc2.weight.data * 3
        self.check(model, x)
        assert (forward(model, x)[0] - before[0]).abs().max() > 1e-2

    def test_by_load_state_dict(self):
        model, x, before = self.edited()
        model.load_state_dict(build().state_dict() | {
            k: v * 0.5 for k, v in build().state_dict().items() if 'fc1' in k})
        self.check(model, x)
        assert (forward(model, x)[0] - before[0]).abs().max() > 1e-2

    def test_in_place_without_autograd(self):
        model, x, before = self.edited()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith('fc1.weight'):
                    p.mul_(0.5)
        self.check(model, x)
        assert (forward(model, x)[0] - before[0]).abs().max() > 1e-2

    def test_by_mmengines_ema_hook(self):
        """MMEngine's EMAHook swaps the averaged weights in through ``.data`` before a
        validation epoch (and back after it)."""
        from mmengine.hooks import EMAHook
        from mmengine.model import ExponentialMovingAverage
        model, x, before = self.edited()
        hook = EMAHook()
        hook.src_model = model
        hook.ema_model = ExponentialMovingAverage(build(), momentum=0.5)
        with torch.no_grad():
            for p in hook.ema_model.module.parameters():
                p.mul_(0.5)
        hook._swap_ema_parameters()
        self.check(model, x)
        assert (forward(model, x)[0] - before[0]).abs().max() > 1e-2
        hook._swap_ema_parameters()
        assert_close(forward(model, x), before, 1e-6)


def test_copies_and_pickles_of_an_optimized_model_compute_the_same():
    model = build().eval()
    x = image()
    expected = forward(model, x)
    for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert is_optimized(other)
        assert_close(forward(other, x), expected, 1e-6)


def test_a_model_converted_after_the_swap_runs_in_its_new_type():
    model = build().eval()
    x = image()
    expected = forward(plain(model).double(), x.double())
    assert_close(forward(model.double(), x.double()), expected, 1e-12)


class TestBadInput:
    def test_a_model_in_training_mode_is_refused(self):
        with pytest.raises(ValueError, match=r'is in training mode; call model.eval\(\) first'):
            optimize_for_cpu_inference(build().train())

    def test_a_model_on_another_device_is_refused(self):
        model = build(cpu_inference=False).to('meta').eval()  # meta: any device but the CPU
        with pytest.raises(ValueError, match=r"has SwinV2 blocks on \['meta'\]; it speeds up "
                                             r'CPU inference only'):
            optimize_for_cpu_inference(model)

    def test_eval_on_another_device_keeps_the_blocks(self):
        assert not is_optimized(build().to('meta').eval())

    def test_twice_is_a_no_op_that_says_so(self):
        model = build().eval()
        blocks = [m for m in model.modules() if isinstance(m, InferenceBlock)]
        with logged() as messages:
            optimize_for_cpu_inference(model)
        assert 'the model is optimized already; nothing to do' in '\n'.join(messages)
        assert [m for m in model.modules() if isinstance(m, InferenceBlock)] == blocks


def test_the_private_torch_ops_have_the_schemas_we_call():
    """Fails on a torch whose oneDNN linear ops changed: then CPU inference falls back to
    F.linear (next test), and torch_private.SCHEMAS needs updating."""
    assert torch_private.schema_mismatches() == []
    assert torch_private.packed_linear_supported()


def test_changed_private_ops_are_reported_and_f_linear_runs(monkeypatch):
    monkeypatch.setitem(torch_private.SCHEMAS, '_linear_pointwise', 'mkldnn::_linear_pointwise()')
    torch_private.packed_linear_supported.cache_clear()
    try:
        with logged() as messages:
            model = build().eval()
            x = image()
            ours = forward(model, x)
        assert 'changed torch.ops.mkldnn._linear_pointwise' in '\n'.join(messages)
        prepared = next(m for m in model.modules() if isinstance(m, InferenceBlock)).prepare(
            torch.float32)
        assert not any(layer.packed for layer in prepared)
        assert_close(ours, forward(plain(model), x), 2e-5)
    finally:
        torch_private.packed_linear_supported.cache_clear()


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize('gelu', [False, True])
def test_prepared_linear_is_f_linear(dtype, gelu):
    g = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(48, 32, generator=g), torch.randn(48, generator=g)
    x = torch.randn(5, 7, 32, generator=g)
    layer = PreparedLinear(weight, bias, dtype)
    assert layer.packed == (dtype != torch.float64)
    expected = F.linear(x.to(dtype), weight.to(dtype), bias.to(dtype))
    expected = F.gelu(expected) if gelu else expected
    out = layer(x, gelu=gelu)
    assert out.dtype == dtype and out.shape == (5, 7, 48)
    tol = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float64: 1e-12}[dtype]
    torch.testing.assert_close(out.double(), expected.double(), rtol=tol, atol=tol)
