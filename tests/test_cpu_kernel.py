"""The compiled attention kernel of CPU inference (``mmswinv2/cpu/csrc``, ``mmswinv2.cpu.kernel``).

The kernel is checked against the attention formula evaluated in float64 with plain PyTorch
ops, here, on windows of several shapes (tokens and head dims that are not whole vectors),
shift masks and pieces that start inside an image, in fp32, bf16 and float64; then how it is
built (ahead of time, by ``make install``) and found at run time, and what happens without it.
"""
import os
import subprocess
import sys
import threading

import pytest
import torch
import torch.nn.functional as F

from mmswinv2.cpu import kernel
from mmswinv2.models.windows import ShiftMask

#: name: (window, channels, heads, window grid of an image, shift, first window, windows)
CASES = {
    'w8 shifted': ((8, 8), 96, 3, (3, 4), (4, 4), 0, 24),
    'w7 d24 from row 1': ((7, 7), 72, 3, (3, 5), (3, 3), 5, 10),
    'w5x12 d40 last row': ((5, 12), 80, 2, (2, 2), (2, 6), 2, 2),
    'w16 unshifted': ((16, 16), 64, 2, (2, 2), (0, 0), 0, 8),
}

#: max |kernel - float64 formula| / max |formula|. fp32: the kernel's own rounding (the
#: PyTorch ops' is of the same order, 1e-6); bf16: the weights and the output rounded to bf16
#: (2^-9 relative each), measured 3.7-4.3e-3, as the PyTorch ops'; float64: rounding only.
BOUNDS = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float64: 1e-13}


def case_inputs(case, dtype, seed=0):
    """qkv projection, scales (one head at the clamp, 100), position bias in [0, 16], the shift
    mask (or None) and the piece's first window, for CASES[case]."""
    window, C, heads, grid, shift, first_window, windows = CASES[case]
    g = torch.Generator().manual_seed(seed)
    N = window[0] * window[1]
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    qkv = (torch.randn(windows, N, 3 * C, generator=g, dtype=torch.float64) + 0.3).to(dtype)
    scale = torch.exp(torch.rand(heads, generator=g, dtype=torch.float64) * 4.6).to(compute)
    scale[0] = 100.0
    bias = (16 * torch.sigmoid(torch.randn(heads, N, N, generator=g,
                                           dtype=torch.float64))).to(compute)
    mask = ShiftMask(grid, window, shift, torch.device('cpu')) if any(shift) else None
    return qkv, scale, bias, mask, first_window


def formula(qkv, scale, bias, mask, first_window):
    """The attention in float64: ``softmax(cos(q, k) * scale + bias [+ mask]) @ v``."""
    windows, N, C3 = qkv.shape
    heads = bias.shape[0]
    q, k, v = qkv.double().view(windows, N, 3, heads, C3 // 3 // heads).permute(2, 0, 3, 1, 4)
    q = F.normalize(q, dim=-1) * scale.double().view(heads, 1, 1)
    logits = q @ F.normalize(k, dim=-1).transpose(-2, -1) + bias.double()
    if mask is not None:
        index = (first_window + torch.arange(windows)) % mask.num_windows
        logits = logits + mask.patterns.double()[mask.kinds()[index]].unsqueeze(1)
    return (logits.softmax(-1) @ v).transpose(1, 2).reshape(windows, N, C3 // 3)


def run(qkv, scale, bias, mask, first_window):
    patterns, kinds = ((mask.patterns.to(bias.dtype), mask.kinds()) if mask is not None
                       else (bias.new_empty(0), torch.empty(0, dtype=torch.long)))
    return kernel.window_attention(qkv, scale, bias, patterns, kinds, first_window)


def relative_error(out, reference):
    return ((out.double() - reference).abs().max() / reference.abs().max()).item()


def test_the_kernel_is_built_and_loads():
    """``make install`` (tools/install_deps.sh) builds it; nothing is compiled here."""
    assert kernel.available(), f'no kernel at {kernel.library_path(kernel.build_for())}: ' \
                               f'run python -m mmswinv2.cpu.build'
    assert kernel.loaded_build == kernel.build_for()


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize('case', list(CASES))
def test_the_kernel_computes_the_formula(case, dtype):
    inputs = case_inputs(case, dtype)
    out = run(*inputs)
    assert out.dtype == dtype and out.shape == (*inputs[0].shape[:2], inputs[0].shape[2] // 3)
    error = relative_error(out, formula(*inputs))
    assert error <= BOUNDS[dtype], error


def test_the_mask_follows_the_windows_of_the_piece():
    """A piece of the last row of windows gets the last row's mask: the same inputs taken as
    the first windows of an image (no mask there) give other outputs."""
    qkv, scale, bias, mask, first_window = case_inputs('w5x12 d40 last row', torch.float32)
    assert first_window > 0
    expected = formula(qkv, scale, bias, mask, first_window)
    assert relative_error(run(qkv, scale, bias, mask, first_window), expected) <= 1e-5
    assert relative_error(run(qkv, scale, bias, mask, 0), expected) > 0.1


def test_logits_spread_over_200_stay_within_the_bound():
    """The kernel's exp gives 0 below fp32's normal range (weights under e^-87 of their row's
    largest, such as masked pairs' e^-100), so no subnormal weight reaches ``weights @ v``;
    against the float64 formula it stays within its bound on logits spread over 200 (cosines
    of -1 and 1 at a scale of 100, plus the mask)."""
    qkv, scale, bias, mask, first_window = case_inputs('w8 shifted', torch.float32)
    scale.fill_(100.0)
    q, k, _ = qkv.view(qkv.shape[0], qkv.shape[1], 3, -1).unbind(2)
    k[:, ::2] = -q[:, ::2]  # half the keys opposite to the queries: cosines of -1
    expected = formula(qkv, scale, bias, mask, first_window)
    assert relative_error(run(qkv, scale, bias, mask, first_window), expected) <= 1e-5


def test_the_results_do_not_depend_on_the_threads():
    inputs = case_inputs('w8 shifted', torch.float32)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        two = run(*inputs)
        torch.set_num_threads(1)
        one = run(*inputs)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


def test_the_kernel_keeps_the_calling_threads_thread_count():
    """A thread that runs with one intra-op thread while PyTorch's process-wide default is two
    keeps its one (at::parallel_for's lazy per-thread initialisation would reset it)."""
    inputs = case_inputs('w8 shifted', torch.float32)
    before = torch.get_num_threads()
    seen = []
    set_one, default_two = threading.Event(), threading.Event()

    def worker():
        torch.get_num_threads()  # this thread's own lazy initialisation
        torch.set_num_threads(1)
        set_one.set()
        default_two.wait(10)
        run(*inputs)
        seen.append(torch.get_num_threads())
    try:
        thread = threading.Thread(target=worker)
        thread.start()
        set_one.wait(10)
        torch.set_num_threads(2)
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
        op(qkv, scale, bias[:, :10], patterns, kinds, first_window)
    with pytest.raises(RuntimeError, match='qkv must be float32, bfloat16 or float64'):
        op(qkv.half(), scale, bias, patterns, kinds, first_window)
    with pytest.raises(RuntimeError, match='qkv must be a contiguous'):
        op(qkv.transpose(0, 1), scale, bias, patterns, kinds, first_window)
    with pytest.raises(RuntimeError, match='kinds must index patterns'):
        op(qkv, scale, bias, patterns, kinds + 4, first_window)
    with pytest.raises(RuntimeError, match='scale must hold one Float per head'):
        op(qkv, scale[:1], bias, patterns, kinds, first_window)
    with pytest.raises(RuntimeError, match='bias must be a contiguous Double'):
        op(qkv.double(), scale.double(), bias, patterns.double(), kinds, first_window)


def in_subprocess(code, **env):
    """Run ``code`` in a fresh Python (the kernel loads once per process); its stdout and log."""
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                            env={**os.environ, **env}, timeout=300,
                            cwd=os.path.join(os.path.dirname(__file__), '..'))
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr


LOAD = ('from mmswinv2.cpu import kernel; import time; t = time.perf_counter(); '
        'print("available", kernel.available(), round(time.perf_counter() - t, 2))')


def test_without_a_built_kernel_one_line_says_how_to_build_it_and_nothing_compiles(tmp_path):
    out = in_subprocess(LOAD, MMSWINV2_KERNEL_DIR=str(tmp_path))
    assert 'available False' in out
    assert 'no CPU attention kernel built for this torch and CPU' in out
    assert 'python -m mmswinv2.cpu.build' in out and str(tmp_path) in out
    assert list(tmp_path.iterdir()) == []  # nothing was built
    seconds = float(out.split('available False ')[1].split()[0])
    assert seconds < 5, f'looking for the kernel took {seconds} s'


def test_the_kernel_can_be_turned_off():
    out = in_subprocess(LOAD, MMSWINV2_CPU_KERNEL='0')
    assert 'available False' in out and 'MMSWINV2_CPU_KERNEL=0' in out


def test_the_build_tool_keeps_up_to_date_builds_and_reports_failures(tmp_path):
    """``python -m mmswinv2.cpu.build`` builds what is missing for this CPU and the builds below
    it; what ``make install`` built is up to date; a build that fails says what is needed and
    exits 1, leaving no half-built library behind."""
    result = subprocess.run([sys.executable, '-m', 'mmswinv2.cpu.build'], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    for name in kernel.builds_this_cpu_runs():
        assert f'{name}: up to date' in result.stdout
    failed = subprocess.run([sys.executable, '-m', 'mmswinv2.cpu.build', '--out', str(tmp_path)],
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, 'CXX': 'false'})
    assert failed.returncode == 1
    assert 'failed. A C++ compiler and ninja' in failed.stderr
    assert not any(path.suffix == '.so' for path in tmp_path.rglob('*'))
