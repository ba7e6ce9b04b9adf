"""The parity checks hold on a CPU other than the one the fixtures were made on.

A machine with another CPU makes torch pick other kernels (vector width, BLAS and oneDNN code
paths), and so other fp32 rounding. This is simulated honestly by forcing other kernels on this
machine: each setting below re-runs every parity test (``-m parity``) in a subprocess, whose
float64 and float32 checks must all pass, and reports the worst |diff| per reference.
"""
import collections
import json
import os
import subprocess
import sys

import pytest
import torch

from parity import FIXTURE_SCRIPTS, FixtureError, load_fixture

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Environment settings that change the kernels torch 2.13's CPU build runs.
KERNEL_SETTINGS = {
    'ATEN_CPU_CAPABILITY=avx2': ('ATEN_CPU_CAPABILITY', 'avx2'),  # ATen vector kernels
    'ATEN_CPU_CAPABILITY=default': ('ATEN_CPU_CAPABILITY', 'default'),  # scalar ATen kernels
    'MKL_ENABLE_INSTRUCTIONS=AVX2': ('MKL_ENABLE_INSTRUCTIONS', 'AVX2'),  # MKL GEMM paths
    'ONEDNN_MAX_CPU_ISA=AVX2': ('ONEDNN_MAX_CPU_ISA', 'AVX2'),  # oneDNN matmul / conv paths
}
KERNEL_VARIABLES = {name for name, _ in KERNEL_SETTINGS.values()}

#: What ``torch.backends.cpu.get_cpu_capability()`` must report under the ATen settings.
EXPECTED_CAPABILITY = {'ATEN_CPU_CAPABILITY=avx2': 'AVX2', 'ATEN_CPU_CAPABILITY=default': 'DEFAULT'}


def _cpu_has_avx2() -> bool:
    try:
        with open('/proc/cpuinfo') as f:
            return ' avx2' in f.read()
    except OSError:
        return False


def summarize(rows):
    """Per reference (its fixture file, or ``HF``: the label up to its first space): the worst
    float64 and float32 max |diff|, and the largest fraction of its fp32 bound a diff used."""
    worst = collections.defaultdict(lambda: [0.0, 0.0, 0.0])
    for row in rows:
        entry = worst[row['label'].split(' ')[0]]
        entry[0] = max(entry[0], row['float64'])
        entry[1] = max(entry[1], row['float32'])
        entry[2] = max(entry[2], row['float32'] / row['bound32'])
    return dict(sorted(worst.items()))


@pytest.mark.parametrize('setting', list(KERNEL_SETTINGS))
def test_parity_holds_under_other_cpu_kernels(setting, tmp_path):
    if setting == 'ATEN_CPU_CAPABILITY=avx2' and not _cpu_has_avx2():
        pytest.skip('this CPU has no AVX2: torch cannot be made to use the AVX2 kernels here')
    variable, value = KERNEL_SETTINGS[setting]
    log = tmp_path / 'parity.jsonl'
    env = {k: v for k, v in os.environ.items() if k not in KERNEL_VARIABLES}
    env.update({variable: value, 'MMSWINV2_PARITY_LOG': str(log)})
    probe = subprocess.run(
        [sys.executable, '-c', 'import torch; print(torch.backends.cpu.get_cpu_capability())'],
        env=env, capture_output=True, text=True, check=True)
    if setting in EXPECTED_CAPABILITY:
        assert probe.stdout.strip() == EXPECTED_CAPABILITY[setting], \
            f'{setting} did not take effect: torch reports {probe.stdout.strip()}'
    run = subprocess.run(
        [sys.executable, '-m', 'pytest', '-m', 'parity', '-q', '-p', 'no:cacheprovider',
         '-o', 'addopts=--strict-markers', 'tests'],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, f'parity tests failed under {setting}:\n{run.stdout[-6000:]}'
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert rows, 'the parity tests logged no comparison'
    print(f'\n{setting} (torch CPU capability {probe.stdout.strip()}): worst max |diff| '
          'float64 / float32 per reference, and the most of its fp32 bound used')
    for reference, (d64, d32, used) in summarize(rows).items():
        print(f'  {reference:20s} {d64:.2e} / {d32:.2e}  {used:.0%}')


@pytest.mark.parametrize('name', list(FIXTURE_SCRIPTS))
def test_fixtures_record_the_references_own_fp32_error(name):
    """The fp32 bound of every comparison is derived from the fp32 error each reference showed
    against its own float64 result: every case must record it, one value per output, and it
    must look like fp32 rounding (not zero, not a different function)."""
    fixture = load_fixture(name)
    cases = fixture['cases'].values() if 'cases' in fixture else [fixture]
    for case in cases:
        outputs = case.get('outputs', case.get('stages', []))
        errors = case['reference_fp32_error']
        assert len(errors) == len(outputs) + ('final_norm' in case), name
        assert all(1e-8 < e < 1e-2 for e in errors), f'{name}: {errors}'


def test_missing_or_old_fixture_names_the_script_that_regenerates_it(tmp_path):
    with pytest.raises(FixtureError, match=r'timm_swinv2.pt is missing: regenerate it with '
                                           r'tests/fixtures/make_timm_fixtures.py'):
        load_fixture('timm_swinv2.pt', folder=str(tmp_path))
    # format 1: fp32 outputs and no fixture_format in meta
    torch.save(dict(meta=dict(arch={}), cases={}), tmp_path / 'official_swinv2.pt')
    with pytest.raises(FixtureError, match=r'official_swinv2.pt is format 1; the tests need '
                                           r'format 2 .* tests/fixtures/make_official_fixtures'):
        load_fixture('official_swinv2.pt', folder=str(tmp_path))
    (tmp_path / 'mmpretrain_swinv2.pt').write_bytes(b'not a checkpoint')
    with pytest.raises(FixtureError, match=r'(?s)cannot be read .*make_mmpretrain_fixtures.py'):
        load_fixture('mmpretrain_swinv2.pt', folder=str(tmp_path))
