"""Parity with timm's SwinV2 (``timm/models/swin_transformer_v2.py``, timm 1.0.31).

timm cannot be imported next to the CPU torch of the test environment (no torchvision build), so
its float64 outputs were recorded by ``fixtures/make_timm_fixtures.py`` with the real timm code,
on a reduced-width model with every parameter randomised. Here the timm state dict is converted
to our layout, loaded strictly, and every stage output and the final norm must match (in
float64 and in float32, see ``parity.py``).
"""
import pytest

from mmswinv2 import SwinTransformerV2
from mmswinv2.checkpoints import convert_state_dict

from parity import assert_matches_reference, load_fixture, stages_and_final_norm

pytestmark = pytest.mark.parity


@pytest.fixture(scope='module')
def timm_reference():
    return load_fixture('timm_swinv2.pt')


def build_from_timm(reference, settings):
    arch = reference['meta']['arch']
    model = SwinTransformerV2(
        arch=dict(embed_dims=arch['embed_dim'], depths=arch['depths'],
                  num_heads=arch['num_heads']),
        window_size=settings['window_size'],
        pretrained_window_sizes=settings['pretrained_window_sizes'],
        drop_path_rate=0.)
    state_dict = convert_state_dict(
        {k: v.float() for k, v in reference['state_dict'].items()}, 'timm')
    result = model.load_state_dict(state_dict, strict=False)
    # timm has one final norm (-> norm3); the extra output norms norm0..2 have no source.
    assert sorted(result.missing_keys) == [f'norm{i}.{p}' for i in range(3)
                                           for p in ('bias', 'weight')]
    assert result.unexpected_keys == []
    return model.eval()


@pytest.mark.parametrize('case', ['w8_256', 'w16_256_pw12', 'w8_256x96'])
def test_stage_outputs_match_timm(timm_reference, case):
    ref = timm_reference['cases'][case]
    model = build_from_timm(timm_reference, ref['settings'])
    assert_matches_reference(stages_and_final_norm, model, ref['input'],
                             [*ref['stages'], ref['final_norm']], ref['reference_fp32_error'],
                             f'timm_swinv2 {case}')


def test_fixture_exercises_clipping_and_pretrained_windows(timm_reference):
    """Guard against a fixture that silently stopped covering what the docstring claims."""
    cases = timm_reference['cases']
    assert cases['w16_256_pw12']['settings']['pretrained_window_sizes'] == (12, 12, 12, 6)
    assert tuple(cases['w8_256x96']['stages'][2].shape[2:]) == (16, 6)  # window clipped to 8x6
