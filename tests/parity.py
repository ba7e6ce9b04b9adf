"""The rule every parity test follows: references in float64, ours in float64 and in float32.

A reference output is the reference implementation's **float64** result: stored in a fixture
(``fixtures/*.pt``, made by the ``fixtures/make_*_fixtures.py`` scripts with the real timm,
mmpretrain and official code) or computed in the test (HF transformers, mmdet). Float64
rounding (~1e-15, ~1e-12 after logit scales up to 100 and depth) is the same on every CPU, so
the reference does not depend on the machine that made it.

Our code is then run twice on the same weights and input:

- in float64, within :data:`FP64_TOL`: the same function, proven independently of any machine;
- in float32, within :func:`fp32_bound`: what users run. Our fp32 result carries fp32 rounding
  that depends on the kernels torch picks on the CPU at hand, exactly as the reference's own
  fp32 result does; the bound is derived from the reference's own fp32 error (FP32_MARGIN).

Both runs are made on each inference path of ours (:data:`PATHS`): the model as written
(``models/``), the CPU package applied (``mmswinv2.cpu``: packed linear layers, the compiled
attention kernel, in float64 too), and ``F.scaled_dot_product_attention``.

With ``MMSWINV2_PARITY_LOG=FILE`` set, every comparison appends its measured worst |diff| (one
JSON line) to FILE; ``test_fixture_portability.py`` uses it to report the diffs per kernel
setting.
"""
import copy
import json
import os
from typing import Callable, List, Sequence
from unittest import mock

import torch

from mmswinv2.cpu import is_optimized, optimize_for_cpu_inference, restore
from mmswinv2.models.attention import WindowAttentionV2

from helpers import FIXTURE_FORMAT, max_abs_diff, raw_stage_outputs

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures')

#: Float64 bound: ours equals the reference as a function. Measured: 0 to 1e-13, except timm cr
#: at 2e-9 (its coordinate table is ``log(1 + |d|)``, ours ``log1p(|d|)``, both in fp32 as
#: the references build it: one-ulp differences in that table) and the official code (see
#: OFFICIAL_MAX_LOGIT_SCALE). A different function is far outside: on the timm fixture, stage 4's
#: pretrained window 12 instead of 6 moves outputs by 3.5e-2, pretrained windows left at 0 by 0.5.
FP64_TOL = 1e-8

#: The official code clamps logit scales at ``torch.log(torch.tensor(100.))`` = ln 100 rounded
#: to float32; timm, HF, mmpretrain and we clamp at ln 100 in the model's dtype. In fp32 the two
#: are the same number; in float64 they are 6.4e-8 apart, which moves float64 outputs by up to
#: 2.1e-8 (measured: timm and mmpretrain against the official code, fixture script) wherever a
#: head's scale is clamped. Our checks against the official code therefore clamp where the
#: official code does (:func:`official_logit_clamp`; no change in fp32) and keep FP64_TOL.
OFFICIAL_MAX_LOGIT_SCALE = torch.log(torch.tensor(100.0)).item()

#: Float32 bound, per comparison: FP32_MARGIN times the worst fp32 error that the reference
#: implementation itself shows against its own float64 result on the same weights and input
#: (recorded in the fixture by the script that made it, or measured in the test for in-process
#: references), and at least FP32_FLOOR. Ours is another fp32 evaluation of the same function
#: (bit-identical to HF's in fp32 on the machine measured), so it strays by the same order; the
#: reference's own error moves with the kernels torch picks, by up to 2.6x across the settings
#: of test_fixture_portability.py (timm w8_256: 7.8e-5 recorded with AVX-512, 2.05e-4 with
#: ATEN_CPU_CAPABILITY=avx2), hence the margin. Measured diffs: tests/README.md.
FP32_MARGIN = 4
#: ~10 fp32 ulps at the outputs' magnitude (~10): the bound never falls below rounding noise.
FP32_FLOOR = 1e-5


def fp32_bound(reference_fp32_error: Sequence[float]) -> float:
    return max(FP32_MARGIN * max(reference_fp32_error), FP32_FLOOR)


#: Fixture file -> the script that regenerates it.
FIXTURE_SCRIPTS = {
    'timm_swinv2.pt': 'make_timm_fixtures.py',
    'timm_swinv2_cr.pt': 'make_timm_fixtures.py',
    'official_swinv2.pt': 'make_official_fixtures.py',
    'official_swinv2_transfer.pt': 'make_official_fixtures.py',
    'official_swin_v1.pt': 'make_official_fixtures.py',
    'mmpretrain_swinv2.pt': 'make_mmpretrain_fixtures.py',
}


class FixtureError(AssertionError):
    """A reference fixture is missing or of another format: it names the script to run."""


def load_fixture(name: str, folder: str = FIXTURES) -> dict:
    """Load ``fixtures/NAME`` after checking it exists and is of :data:`FIXTURE_FORMAT`."""
    path = os.path.join(folder, name)
    script = f'tests/fixtures/{FIXTURE_SCRIPTS[name]}'
    how = f'regenerate it with {script} (its docstring says how)'
    if not os.path.isfile(path):
        raise FixtureError(f'reference fixture {path} is missing: {how}')
    try:
        fixture = torch.load(path, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same advice
        raise FixtureError(f'reference fixture {path} cannot be read ({err}): {how}') from err
    meta = fixture.get('meta') if isinstance(fixture, dict) else None
    found = meta.get('fixture_format', 1) if isinstance(meta, dict) else 1
    if found != FIXTURE_FORMAT:
        raise FixtureError(
            f'reference fixture {path} is format {found}; the tests need format '
            f'{FIXTURE_FORMAT} (float64 reference outputs): {how}')
    return fixture


def official_logit_clamp():
    """Within this context our logit scales are clamped where the official code clamps them
    (see OFFICIAL_MAX_LOGIT_SCALE)."""
    return mock.patch('mmswinv2.models.attention.MAX_LOGIT_SCALE', OFFICIAL_MAX_LOGIT_SCALE)


#: Our inference paths, each held to the same rule.
PATHS = ('model', 'cpu', 'sdpa')


def on_path(model: torch.nn.Module, path: str) -> torch.nn.Module:
    """A copy of the eval-mode ``model`` running one of :data:`PATHS`."""
    model = restore(copy.deepcopy(model))
    if path == 'cpu':
        optimize_for_cpu_inference(model)
        assert is_optimized(model), 'no SwinV2 block to run through mmswinv2.cpu'
    for attention in model.modules():
        if isinstance(attention, WindowAttentionV2):
            attention.fused = path == 'sdpa'
    return model


def assert_matches_reference(outputs_of: Callable[[torch.nn.Module, torch.Tensor],
                                                  Sequence[torch.Tensor]],
                             model: torch.nn.Module, x: torch.Tensor,
                             reference: Sequence[torch.Tensor],
                             reference_fp32_error: Sequence[float], label: str) -> None:
    """``outputs_of(model, x)`` (ours, on each of :data:`PATHS`; ``model`` in eval mode) against
    the float64 ``reference`` outputs: in float64 within FP64_TOL, in float32 within
    ``fp32_bound(reference_fp32_error)`` (the reference's own fp32 error, per output)."""
    reference = [r.double() for r in reference]
    bound32 = fp32_bound(reference_fp32_error)
    has_blocks = any(isinstance(m, WindowAttentionV2) for m in model.modules())
    for path in PATHS if has_blocks else PATHS[:1]:
        with torch.no_grad():
            ours64 = outputs_of(on_path(model, path).double(), x.double())
            ours32 = outputs_of(on_path(model, path).float(), x.float())
        where = f'{label} [{path}]'
        assert len(ours64) == len(reference) == len(ours32), \
            f'{where}: {len(ours64)} outputs, {len(reference)} in the reference'
        diffs64 = [max_abs_diff(a, b) for a, b in zip(ours64, reference)]
        diffs32 = [max_abs_diff(a.double(), b) for a, b in zip(ours32, reference)]
        _log(where, diffs64, diffs32, reference_fp32_error, bound32)
        for i, (d64, d32) in enumerate(zip(diffs64, diffs32)):
            assert d64 <= FP64_TOL, \
                f'{where} output {i}: float64 max |diff| {d64:.3g} > {FP64_TOL}'
            assert d32 <= bound32, (
                f'{where} output {i}: float32 max |diff| {d32:.3g} > {bound32:.3g} '
                f'({FP32_MARGIN} x the reference\'s own fp32 error '
                f'{max(reference_fp32_error):.3g})')


def _log(label: str, diffs64: List[float], diffs32: List[float],
         reference_fp32_error: Sequence[float], bound32: float) -> None:
    path = os.environ.get('MMSWINV2_PARITY_LOG')
    if not path:
        return
    test = os.environ.get('PYTEST_CURRENT_TEST', '').split(' ')[0]
    with open(path, 'a') as f:
        f.write(json.dumps(dict(test=test, label=label, float64=max(diffs64),
                                float32=max(diffs32),
                                reference_fp32=max(reference_fp32_error),
                                bound32=bound32)) + '\n')


def stages_and_final_norm(model: torch.nn.Module, x: torch.Tensor) -> List[torch.Tensor]:
    """Our stage outputs before the output norms, then the last output norm's (all NCHW): what
    the fixtures record of timm and the official code (their one final norm)."""
    raw, outs = raw_stage_outputs(model, x)
    return [*raw, outs[-1]]
