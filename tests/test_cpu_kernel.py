"""The compiled attention kernel of CPU inference (mmswinv2.models.cpu_kernel).

The kernel is checked against the attention formula evaluated in float64 with plain PyTorch
ops, here, on windows of several shapes (tokens and head dims that are not whole vectors),
shift masks and pieces of rows of windows; against HF transformers' real Swinv2Backbone through
the whole backbone; and in use: it keeps each stream's thread count, and where it cannot be
built the model says why and runs the PyTorch ops.
"""
import copy
import logging
import threading

import pytest
import torch
import torch.nn.functional as F

from mmswinv2 import SwinTransformerV2
from mmswinv2.models import cpu_kernel
from mmswinv2.models.lean_autograd import LOGIT_FLOOR
from mmswinv2.models.windows import ShiftMask

from helpers import attention_path, float64_reference, randomize_, raw_stage_outputs
from parity import assert_matches_reference

#: name: (window, channels, heads, window grid of an image, shift, window rows of the piece)
CASES = {
    'w8 shifted': ((8, 8), 96, 3, (3, 4), (4, 4), None),
    'w7 d24 rows 1-2': ((7, 7), 72, 3, (3, 5), (3, 3), (1, 3)),
    'w5x12 d40 last row': ((5, 12), 80, 2, (2, 2), (2, 6), (1, 2)),
    'w16 unshifted': ((16, 16), 64, 2, (2, 2), (0, 0), None),
}

#: max |kernel - float64 formula| / max |formula|. fp32: the kernel's own rounding, measured
#: 0.9-1.5e-6 (the PyTorch ops' 1.0-1.5e-6); bf16: the weights and the output rounded to bf16
#: (2^-9 relative each), measured 3.7-4.3e-3, as the PyTorch ops'.
BOUNDS = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


def case_inputs(case, dtype, seed=0):
    """qkv projection, scales (one head at the clamp, 100), position bias in [0, 16], the shift
    mask (or None) and the piece's first window, for CASES[case]."""
    window, C, heads, grid, shift, rows = CASES[case]
    g = torch.Generator().manual_seed(seed)
    N = window[0] * window[1]
    windows = (rows[1] - rows[0]) * grid[1] if rows else 2 * grid[0] * grid[1]
    qkv = (torch.randn(windows, N, 3 * C, generator=g) + 0.3).to(dtype)
    scale = torch.exp(torch.rand(heads, generator=g) * 4.6)
    scale[0] = 100.0
    bias = 16 * torch.sigmoid(torch.randn(heads, N, N, generator=g))
    mask = ShiftMask(grid, window, shift, torch.device('cpu')) if any(shift) else None
    first_window = rows[0] * grid[1] if rows else 0
    return qkv, scale, bias, mask, first_window


def formula(qkv, scale, bias, mask, first_window, floor_mode):
    """The attention in float64: ``softmax(cos(q, k) * scale + bias [+ mask]) @ v``, the logits
    floored at ``LOGIT_FLOOR`` below their row's largest where ``floor_mode`` says."""
    windows, N, C3 = qkv.shape
    heads = bias.shape[0]
    q, k, v = qkv.double().view(windows, N, 3, heads, C3 // 3 // heads).permute(2, 0, 3, 1, 4)
    q = F.normalize(q, dim=-1) * scale.double().view(heads, 1, 1)
    logits = q @ F.normalize(k, dim=-1).transpose(-2, -1) + bias.double()
    floored = torch.full((windows,), floor_mode == cpu_kernel.FLOOR_ALL)
    if mask is not None:
        index = (first_window + torch.arange(windows)) % mask.num_windows
        kinds = mask.kinds()[index]
        logits = logits + mask.patterns.double()[kinds].unsqueeze(1)
        floored |= kinds != 0
    floor = logits.amax(-1, keepdim=True) + LOGIT_FLOOR
    logits = torch.where(floored.view(-1, 1, 1, 1), torch.maximum(logits, floor), logits)
    return (logits.softmax(-1) @ v).transpose(1, 2).reshape(windows, N, C3 // 3)


def kernel(qkv, scale, bias, mask, first_window, floor_mode):
    return cpu_kernel.window_attention(qkv, scale, bias, mask, first_window, floor_mode)


def relative_error(out, reference):
    return ((out.double() - reference).abs().max() / reference.abs().max()).item()


def test_the_kernel_builds_on_this_machine():
    assert cpu_kernel.available(), 'the CPU attention kernel did not build: see the log'


@pytest.mark.parametrize('floor_mode', [cpu_kernel.FLOOR_MASKED_WINDOWS, cpu_kernel.FLOOR_ALL])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('case', list(CASES))
def test_the_kernel_computes_the_formula(case, dtype, floor_mode):
    inputs = case_inputs(case, dtype)
    out = kernel(*inputs, floor_mode)
    assert out.dtype == dtype and out.shape == (*inputs[0].shape[:2], inputs[0].shape[2] // 3)
    error = relative_error(out, formula(*inputs, floor_mode))
    assert error <= BOUNDS[dtype], error


def test_the_mask_follows_the_windows_of_the_piece():
    """A piece of the last rows of windows gets the last row's mask: the same inputs taken as
    the first rows (no mask there) give other outputs."""
    qkv, scale, bias, mask, first_window = case_inputs('w5x12 d40 last row', torch.float32)
    assert first_window > 0
    expected = formula(qkv, scale, bias, mask, first_window, cpu_kernel.FLOOR_ALL)
    out = kernel(qkv, scale, bias, mask, first_window, cpu_kernel.FLOOR_ALL)
    as_first_rows = kernel(qkv, scale, bias, mask, 0, cpu_kernel.FLOOR_ALL)
    assert relative_error(out, expected) <= BOUNDS[torch.float32]
    assert relative_error(as_first_rows, expected) > 0.1


def test_the_results_do_not_depend_on_the_threads():
    inputs = case_inputs('w8 shifted', torch.float32)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        two = kernel(*inputs, cpu_kernel.FLOOR_ALL)
        torch.set_num_threads(1)
        one = kernel(*inputs, cpu_kernel.FLOOR_ALL)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


def test_the_kernel_keeps_the_calling_threads_thread_count():
    """A stream's thread runs with one intra-op thread while PyTorch's process-wide default is
    two; the kernel must not reset it (at::parallel_for's lazy per-thread initialisation
    would, at its first call in each thread)."""
    inputs = case_inputs('w8 shifted', torch.float32)
    before = torch.get_num_threads()
    seen = []
    set_one, default_two = threading.Event(), threading.Event()

    def stream():
        torch.get_num_threads()  # this thread's own lazy initialisation
        torch.set_num_threads(1)
        set_one.set()
        default_two.wait(10)
        kernel(*inputs, cpu_kernel.FLOOR_ALL)
        seen.append(torch.get_num_threads())
    try:
        thread = threading.Thread(target=stream)
        thread.start()
        set_one.wait(10)
        torch.set_num_threads(2)  # the process-wide default, as the caller sets it back
        default_two.set()
        thread.join(30)
    finally:
        torch.set_num_threads(before)
    assert seen == [1]


def test_bad_inputs_are_refused_with_the_argument_named():
    qkv, scale, bias, mask, first_window = case_inputs('w8 shifted', torch.float32)
    op = torch.ops.mmswinv2.window_attention
    patterns, kinds = mask.patterns, mask.kinds()
    with pytest.raises(RuntimeError, match='bias must be'):
        op(qkv, scale, bias[:, :10], patterns, kinds, first_window, 2, LOGIT_FLOOR)
    with pytest.raises(RuntimeError, match='qkv must be float32 or bfloat16'):
        op(qkv.half(), scale, bias, patterns, kinds, first_window, 2, LOGIT_FLOOR)
    with pytest.raises(RuntimeError, match='kinds must index patterns'):
        op(qkv, scale, bias, patterns, kinds + 4, first_window, 2, LOGIT_FLOOR)
    with pytest.raises(RuntimeError, match='scale must hold one float32 per head'):
        op(qkv, scale[:1], bias, patterns, kinds, first_window, 2, LOGIT_FLOOR)


SMALL = dict(embed_dims=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8))


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_the_backbone_is_as_accurate_with_the_kernel_as_with_the_pytorch_ops(dtype, monkeypatch):
    """Randomised (logit scales to ln 120), window 7 on padded, shifted maps, two images as
    streams; each path against the same model's float64 forward. fp32: both are evaluations of
    one function whose rounding the logit scales (up to 100) amplify, measured 2.2e-6 to
    1.5e-5 of the largest output with the kernel, 2.1e-6 to 1.0e-5 with the ops: the kernel
    within 4x the ops' error (parity.py's margin for two fp32 evaluations); bf16: within
    test_precision_and_reuse.py's AUTOCAST_BOUNDS."""
    model = randomize_(SwinTransformerV2(arch=SMALL, window_size=7, drop_path_rate=0.),
                       seed=0).eval()
    x = torch.randn(2, 3, 150, 190, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = copy.deepcopy(model).double()(x.double())

    def errors(path):
        with monkeypatch.context() as m:
            calls = attention_path(m, path)
            with torch.no_grad(), torch.autocast('cpu', dtype=dtype,
                                                 enabled=dtype != torch.float32):
                outs = model(x)
        assert all(o.dtype == dtype for o in outs)
        return [relative_error(o, r) for o, r in zip(outs, reference, strict=True)], calls
    (kernel_errors, calls), (ops_errors, none) = errors('kernel'), errors('explicit')
    assert len(calls) >= 8 and not none  # every block's attention, in the kernel or not at all
    for ours, ops in zip(kernel_errors, ops_errors):
        if dtype == torch.float32:
            assert ours <= max(4 * ops, 1e-6), (kernel_errors, ops_errors)
        else:
            assert max(ours, ops) <= 0.25, (kernel_errors, ops_errors)


def test_the_backbone_with_the_kernel_matches_hf(monkeypatch):
    """HF transformers' real Swinv2Backbone, randomised, at a non-window-multiple size (padding
    before the shift): our fp32 forward, with every block's attention in the kernel, against
    HF's float64 result within the parity rule's bound (parity.py)."""
    from test_parity_hf import CASES as HF_CASES
    from test_parity_hf import build_pair, hf_feature_maps
    image_size, window, pretrained = HF_CASES['tiny_w8_333x517']
    hf, ours = build_pair(image_size, window, pretrained, fused=False)
    x = torch.randn(1, 3, *image_size, generator=torch.Generator().manual_seed(0))
    theirs, hf_fp32_error = float64_reference(hf, x, hf_feature_maps)
    calls = attention_path(monkeypatch, 'kernel')
    assert_matches_reference(lambda model, x: raw_stage_outputs(model, x)[0], ours, x, theirs,
                             hf_fp32_error, 'HF tiny_w8_333x517 (CPU kernel)')
    assert len(calls) >= sum(ours.depths)  # the fp32 forward's blocks (float64 runs the ops)


def test_a_kernel_that_cannot_be_built_is_reported_once_and_the_ops_run(monkeypatch):
    import mmengine.logging
    import torch.utils.cpp_extension as cpp_extension

    def no_compiler(*args, **kwargs):
        raise RuntimeError('Ninja is required to load C++ extensions')
    logged = []
    monkeypatch.setattr(mmengine.logging, 'print_log',
                        lambda message, logger=None, level=None: logged.append((message, level)))
    monkeypatch.setattr(cpp_extension, 'load', no_compiler)
    monkeypatch.setattr(cpu_kernel, '_tried', False)  # not tried yet in this process
    monkeypatch.setattr(cpu_kernel, 'loaded_build', None)
    model = randomize_(SwinTransformerV2(arch=SMALL, window_size=7, drop_path_rate=0.),
                       seed=0).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        outs = model(x)
        model(x)
    warnings = [(m, level) for m, level in logged if 'could not be built' in m]
    assert len(warnings) == 1, logged
    message, level = warnings[0]
    assert level == logging.WARNING
    assert 'Ninja is required' in message and 'MMSWINV2_CPU_KERNEL=0' in message
    assert not cpu_kernel.available()
    with monkeypatch.context() as m:
        attention_path(m, 'explicit')
        with torch.no_grad():
            expected = model(x)
    for a, b in zip(outs, expected, strict=True):
        assert torch.equal(a, b)


def test_the_kernel_can_be_turned_off(monkeypatch):
    monkeypatch.setenv(cpu_kernel.ENV_SWITCH, '0')
    monkeypatch.setattr(cpu_kernel, '_tried', False)
    monkeypatch.setattr(cpu_kernel, 'loaded_build', None)
    assert not cpu_kernel.available()
