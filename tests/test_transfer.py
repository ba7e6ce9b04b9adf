"""Window transfer: tools/transfer_checkpoint.py and loading through ``init_cfg`` alone.

References, in float64: the official code at the target windows (committed fixtures, see
fixtures/make_official_fixtures.py: ``official_swinv2_transfer.pt``) and HF transformers
in-process, built with the target windows and the checkpoint's pretraining windows. For Swin V1,
mmdet's own ``SwinTransformer.init_weights`` resizing of the bias tables.
"""
import importlib.util
import logging
import os

import pytest
import torch
from transformers import Swinv2Config, Swinv2ForImageClassification

from mmswinv2 import SwinTransformerV2

from helpers import float64_reference, randomize_
from parity import assert_matches_reference, load_fixture
from test_checkpoints import (SMALL, assert_matches_official, fp32, hf_stages_and_final_norm,
                              official_checkpoint, stages_and_final_tokens)


def _tool(name):
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(os.path.dirname(__file__), '..', 'tools', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


transfer_checkpoint = _tool('transfer_checkpoint')


@pytest.fixture(scope='module')
def official_ref():
    return load_fixture('official_swinv2.pt')


@pytest.fixture(scope='module')
def transfer_ref(official_ref):
    ref = load_fixture('official_swinv2_transfer.pt')
    assert ref['weights'].keys() == official_ref['weights'].keys()
    assert all(torch.equal(v, official_ref['weights'][k]) for k, v in ref['weights'].items())
    return ref


def loaded(path, caplog=None, **kwargs):
    """A SMALL backbone loaded from ``path`` by ``init_cfg`` (pretrained windows not set)."""
    model = SwinTransformerV2(arch=SMALL, drop_path_rate=0., **kwargs,
                              init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()
    return model.eval()


def save(tmp_path, checkpoint, name):
    path = tmp_path / name
    torch.save(checkpoint, path)
    return path


# ---- SwinV2: official semantics ----------------------------------------------------------

@pytest.mark.parity
@pytest.mark.parametrize('source, window, reference', [
    ('w8_256', 16, 'w16_256_pw8'),      # window 8 -> 16
    ('w12_192', 16, 'w16_256_pw12'),    # the 22K 192 px / window 12 layout -> 16
    ('w12_192', 24, 'w24_384_pw12'),    # -> 24
])
@pytest.mark.parametrize('route', ['transfer_tool', 'init_cfg'])
def test_transfer_matches_the_official_model_at_the_target_windows(
        tmp_path, capsys, official_ref, transfer_ref, source, window, reference, route):
    source_ref = official_ref if source in official_ref['cases'] else transfer_ref
    ref = official_ref if reference in official_ref['cases'] else transfer_ref
    src = save(tmp_path, official_checkpoint(source_ref, source), f'official_{source}.pth')
    if route == 'transfer_tool':
        dst = tmp_path / f'transferred_w{window}.pth'
        assert transfer_checkpoint.main([str(src), str(dst), '--window-size', str(window)]) == 0
        trained = ref['cases'][reference]['settings']['pretrained_window_sizes']
        assert (f'backbone:    window_size={window}, pretrained_window_sizes={tuple(trained)}'
                in capsys.readouterr().out)
        src = dst
    model = loaded(src, window_size=window)
    assert list(model.pretrained_window_sizes) == ref['cases'][reference]['settings'][
        'pretrained_window_sizes']
    assert_matches_official(model, ref, reference, f'official {source} -> {reference} ({route})')


@pytest.mark.parity
def test_source_checkpoint_matches_the_official_model_at_its_own_windows(tmp_path, transfer_ref):
    src = save(tmp_path, official_checkpoint(transfer_ref, 'w12_192'), 'official_w12_192.pth')
    assert_matches_official(loaded(src, window_size=12), transfer_ref, 'w12_192',
                            'official w12_192')


def test_the_silent_case_now_adopts_and_logs_the_pretraining_windows(tmp_path, transfer_ref,
                                                                     caplog):
    """The issue's case: a 192 px / window 12 checkpoint into a window-24 backbone with default
    pretrained_window_sizes (init_weights runs this same loader with MMEngine's logger); and an
    explicit, contradicting setting warns."""
    from test_checkpoints import _load_logged
    src = save(tmp_path, official_checkpoint(transfer_ref, 'w12_192'), 'official_w12_192.pth')
    model, log = _load_logged(src, caplog, window_size=24)
    assert model.pretrained_window_sizes == (12, 12, 12, 6)
    assert ('was pretrained with windows [12, 12, 12, 6]; the model runs windows '
            '[24, 24, 24, 24]: pretrained_window_sizes=(12, 12, 12, 6)') in log
    model, _ = _load_logged(src, caplog, window_size=24, pretrained_window_sizes=24)
    assert model.pretrained_window_sizes == (24, 24, 24, 24)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any('pretrained with windows [12, 12, 12, 6], but the config sets '
               'pretrained_window_sizes=[24, 24, 24, 24]' in w for w in warnings), warnings


def test_transfer_to_the_same_windows_changes_no_output(tmp_path, official_ref):
    src = save(tmp_path, official_checkpoint(official_ref, 'w8_256'), 'official_w8.pth')
    dst = tmp_path / 'same.pth'
    assert transfer_checkpoint.main([str(src), str(dst), '--window-size', '8']) == 0
    x = official_ref['cases']['w8_256']['input'].float()
    with torch.no_grad():
        before, after = loaded(src, window_size=8)(x), loaded(dst, window_size=8)(x)
    for a, b in zip(before, after, strict=True):
        assert torch.equal(a, b)


# ---- SwinV2: HF transformers in-process --------------------------------------------------

HF_SMALL = dict(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], num_labels=10)


@pytest.mark.parity
@pytest.mark.parametrize('pretrain, target', [
    ((256, 8), (256, 16)),    # window 8 -> 16
    ((192, 12), (384, 24)),   # 192 px / window 12 -> 24: trained windows (12, 12, 12, 6)
])
def test_transfer_matches_hf_built_with_the_target_windows(tmp_path, pretrain, target):
    (src_size, src_window), (size, window) = pretrain, target
    source = randomize_(Swinv2ForImageClassification(Swinv2Config(
        image_size=src_size, window_size=src_window, **HF_SMALL)), seed=window).eval()
    source.save_pretrained(tmp_path / 'hf')
    dst = tmp_path / 'transferred.pth'
    assert transfer_checkpoint.main([str(tmp_path / 'hf'), str(dst),
                                     '--window-size', str(window)]) == 0

    trained = [min(src_window, src_size // 4 // 2**i) for i in range(4)]
    reference = Swinv2ForImageClassification(Swinv2Config(
        image_size=size, window_size=window, pretrained_window_sizes=trained, **HF_SMALL))
    reference.load_state_dict(source.state_dict())
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    theirs, hf_error = float64_reference(reference.eval(), x, hf_stages_and_final_norm)
    for path in (dst, tmp_path / 'hf'):  # the transferred file, and the HF folder by init_cfg
        model = loaded(path, window_size=window)
        assert list(model.pretrained_window_sizes) == trained
        assert_matches_reference(stages_and_final_tokens, model, x, theirs, hf_error,
                                 f'HF {src_size}/W{src_window} -> W{window} via {path.name}')


# ---- Swin V1 ------------------------------------------------------------------------------

def test_swin_v1_tables_resized_as_mmdet_does(tmp_path):
    """7 -> 12: our transferred tables equal those mmdet's SwinTransformer.init_weights makes
    from the window-7 checkpoint, and the file loads into a window-12 mmdet backbone."""
    from test_checkpoints import official_state_dict
    from test_swin_v1 import mmdet_swin_from
    v1 = load_fixture('official_swin_v1.pt')
    src = save(tmp_path, {'model': official_state_dict(v1['weights'], v1['buffers'])},
               'swin_v1_official.pth')
    window7 = tmp_path / 'swin_v1_w7_mmdet.pth'
    assert _tool('convert_checkpoint').main([str(src), str(window7)]) == 0
    window12 = tmp_path / 'swin_v1_w12_mmdet.pth'
    assert transfer_checkpoint.main([str(src), str(window12), '--window-size', '12']) == 0

    arch = v1['meta']['arch']
    mmdet_swin = mmdet_swin_from(window7, arch['embed_dim'], arch['depths'], arch['num_heads'],
                                 window_size=12)
    ours = torch.load(window12, weights_only=True)['state_dict']
    theirs = mmdet_swin.state_dict()
    tables = [k for k in ours if k.endswith('relative_position_bias_table')]
    assert len(tables) == sum(arch['depths'])
    for key in tables:
        assert ours[key].shape == (23 * 23, theirs[key[len('backbone.'):]].shape[1])
        assert torch.equal(ours[key], theirs[key[len('backbone.'):]]), key
    # And the tables really changed: window 7's 13 x 13 grid is not window 12's.
    assert torch.load(window7, weights_only=True)['state_dict'][tables[0]].shape[0] == 13 * 13
    result = mmdet_swin.load_state_dict({k[len('backbone.'):]: v for k, v in ours.items()},
                                        strict=False)
    assert not result.unexpected_keys
    # (norm0-2: the classifier checkpoint has the final norm only)
    assert all(k.endswith('relative_position_index') or k.startswith(('norm0.', 'norm1.', 'norm2.'))
               for k in result.missing_keys), result.missing_keys


# ---- bad input ----------------------------------------------------------------------------

@pytest.mark.parametrize('args, message', [
    (['--window-size', '0'], 'argument --window-size: 0 is not positive'),
    (['--window-size', 'x'], "argument --window-size: 'x' is not an integer"),
    (['--window-size', '16', '16', '16'],
     '--window-size: give one window for all stages or one per stage (4), got 3'),
    (['--window-size', '16', '--img-size', '0'], 'argument --img-size: 0 is not positive'),
    (['--window-size', '16', '--img-size', '1', '2', '3'], '--img-size: give H or H W'),
    (['--window-size', '16', '--format', 'nope'], "argument --format: invalid choice: 'nope'"),
    (['--window-size', '16', '--format', 'hf'], "format 'hf' was requested"),
    (['--window-size', '16', '--pretrained-window-sizes', '8', '8'],
     '--pretrained-window-sizes: give one window for all stages or one per stage (4), got 2'),
])
def test_bad_arguments_name_the_argument_and_write_nothing(tmp_path, capsys, official_ref, args,
                                                           message):
    src = save(tmp_path, official_checkpoint(official_ref, 'w8_256'), 'official_w8.pth')
    dst = tmp_path / 'out' / 'transferred.pth'
    try:
        status = transfer_checkpoint.main([str(src), str(dst), *args])
    except SystemExit as exit_:  # argparse's own errors
        status = exit_.code
    assert status != 0
    assert message in capsys.readouterr().err
    assert not dst.exists() and (not dst.parent.exists() or not os.listdir(dst.parent))


def test_source_without_recorded_windows_needs_them_given(tmp_path, capsys):
    timm = load_fixture('timm_swinv2.pt')
    src = save(tmp_path, fp32(timm['state_dict']), 'swinv2_tiny_window8_256.pth')
    dst = tmp_path / 'transferred.pth'
    assert transfer_checkpoint.main([str(src), str(dst), '--window-size', '16']) == 1
    assert 'does not record the windows it was pretrained with: pass ' \
           '--pretrained-window-sizes' in capsys.readouterr().err
    assert not dst.exists()
    assert transfer_checkpoint.main([str(src), str(dst), '--window-size', '16',
                                     '--pretrained-window-sizes', '8']) == 0
    assert loaded(dst, window_size=16).pretrained_window_sizes == (8, 8, 8, 8)


def test_existing_destination_is_kept_on_failure_and_replaced_whole(tmp_path, capsys,
                                                                    official_ref):
    src = save(tmp_path, official_checkpoint(official_ref, 'w8_256'), 'official_w8.pth')
    dst = tmp_path / 'transferred.pth'
    dst.write_bytes(b'previous contents')
    assert transfer_checkpoint.main([str(src), str(dst), '--window-size', '16', '16']) == 1
    assert dst.read_bytes() == b'previous contents'
    assert transfer_checkpoint.main([str(src), str(dst), '--window-size', '16']) == 0
    assert torch.load(dst, weights_only=True)['meta']['window_sizes'] == [16, 16, 16, 16]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith('.')] == []


def test_img_size_prints_each_stage_window_and_shift(tmp_path, capsys, official_ref):
    src = save(tmp_path, official_checkpoint(official_ref, 'w8_256'), 'official_w8.pth')
    assert transfer_checkpoint.main([str(src), str(tmp_path / 'w16.pth'), '--window-size', '16',
                                     '--img-size', '512', '384']) == 0
    out = capsys.readouterr().out
    assert 'stage 0: map 128x96, window 16x16, shift 8x8 in odd blocks, 48 windows' in out
    assert 'stage 3: map 16x12, window 16x12 (clipped to the map), shift 0x0' in out
