"""Loading public checkpoint layouts into the backbone through ``init_cfg``, and bad files.

Reference outputs come from the real implementations, in float64: HF transformers in-process,
the official code, timm and mmpretrain through committed fixtures (see fixtures/make_*_fixtures.py).
Ours are compared in float64 and in float32 (the rule and bounds: ``parity.py``).
"""
import logging
import os
import pickle

import numpy as np
import pytest
import torch
from transformers import Swinv2Config, Swinv2Model

from mmswinv2 import SwinTransformerV2
from mmswinv2.checkpoints import CheckpointError, detect_layout, read_checkpoint

from helpers import capture_outputs, float64_reference, randomize_, raw_stage_outputs
from parity import (assert_matches_reference, load_fixture, official_logit_clamp,
                    stages_and_final_norm)

SMALL = dict(embed_dims=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8))


def fp32(tree):
    if isinstance(tree, dict):
        return {k: fp32(v) for k, v in tree.items()}
    return tree.float() if isinstance(tree, torch.Tensor) else tree


def pretrained(path, **kwargs):
    model = SwinTransformerV2(init_cfg=dict(type='Pretrained', checkpoint=str(path)),
                              drop_path_rate=0., **kwargs)
    model.init_weights()
    return model.eval()


def official_state_dict(weights, buffers):
    """The exact state dict the official code saved (see make_official_fixtures.py)."""
    dtypes = dict(attn_mask=torch.float32, relative_position_index=torch.int64,
                  relative_coords_table=torch.float32)
    return {**fp32(weights), **{k: v.to(dtypes[k.rsplit('.', 1)[-1]]) for k, v in buffers.items()}}


def official_checkpoint(fixture, case):
    return {'model': official_state_dict(fixture['weights'], fixture['cases'][case]['buffers'])}


@pytest.fixture(scope='module')
def official_ref():
    return load_fixture('official_swinv2.pt')


def assert_matches_official(model, ref, case, label):
    """Every stage output and the final norm of ``model`` equal the official code's."""
    case_ref = ref['cases'][case]
    with official_logit_clamp():
        assert_matches_reference(stages_and_final_norm, model, case_ref['input'],
                                 [*case_ref['stages'], case_ref['final_norm']],
                                 case_ref['reference_fp32_error'], label)


def assert_loads_to_official(path, ref, case, layout):
    """``path`` is detected as ``layout``, loads with the case's windows, and every stage output
    and the final norm equal the official code's."""
    assert detect_layout(read_checkpoint(path).state_dict).name == layout
    settings = ref['cases'][case]['settings']
    model = pretrained(path, arch=SMALL, window_size=settings['window_size'],
                       pretrained_window_sizes=settings['pretrained_window_sizes'])
    assert_matches_official(model, ref, case, f'official_swinv2 {case} via {layout}')


def timm_conversion(official, timm_keys):
    """timm's checkpoint_filter_fn output, rebuilt from the key mapping it produced."""
    return {timm_key: official[official_key] for timm_key, official_key in timm_keys.items()}


@pytest.mark.parity
@pytest.mark.parametrize('case', ['w8_256', 'w16_256_pw12'])
def test_official_checkpoint_matches_official_outputs(tmp_path, official_ref, case):
    path = tmp_path / 'swinv2_official.pth'
    torch.save(official_checkpoint(official_ref, case), path)
    assert_loads_to_official(path, official_ref, case, 'official')


@pytest.mark.parity
@pytest.mark.parametrize('case', ['w8_256', 'w16_256_pw12'])
@pytest.mark.parametrize('layout', ['timm', 'mmpretrain'])
def test_timm_and_mmpretrain_layouts_round_trip_to_the_official_result(tmp_path, official_ref,
                                                                       case, layout):
    """Official weights in timm's layout (converted by timm's own checkpoint_filter_fn) and in
    mmpretrain's (exported by us; real mmpretrain reproduced the official outputs on that export
    when the fixture was made) load back and give the official outputs."""
    from mmswinv2.checkpoints.formats import convert_state_dict, export_state_dict
    ref = official_ref
    official = official_checkpoint(ref, case)['model']
    if layout == 'timm':
        checkpoint = timm_conversion(official, ref['cases'][case]['timm_keys'])
    else:
        assert ref['cases'][case]['mmpretrain_max_diff'] <= 1e-6  # float64, see the script
        checkpoint = {'state_dict': export_state_dict(
            convert_state_dict(official, 'official'), 'mmpretrain')}
    path = tmp_path / f'{layout}.pth'
    torch.save(checkpoint, path)
    assert_loads_to_official(path, ref, case, layout)


@pytest.mark.parametrize('case, windows, pretrained', [
    ('w8_256', [8, 8, 8, 8], [0, 0, 0, 0]),
    ('w16_256_pw12', [16, 16, 16, 8], [12, 12, 12, 6]),  # stage 4 clipped to the 8x8 map
])
def test_windows_are_read_from_official_buffers(official_ref, case, windows, pretrained):
    from mmswinv2.checkpoints.arch import windows_from_coords_tables
    found = windows_from_coords_tables(official_checkpoint(official_ref, case)['model'])
    assert found == dict(window_sizes=windows, pretrained_window_sizes=pretrained)


@pytest.mark.parity
@pytest.mark.parametrize('case', ['w8_256', 'w16_256_pw12'])
def test_mmpretrain_checkpoint_matches_mmpretrain_outputs(tmp_path, case):
    ref = load_fixture('mmpretrain_swinv2.pt')
    path = tmp_path / 'swinv2_mmpretrain.pth'
    torch.save(fp32(ref['checkpoint']), path)
    case_ref = ref['cases'][case]
    settings = case_ref['settings']
    assert detect_layout(read_checkpoint(path).state_dict).name == 'mmpretrain'
    model = pretrained(path, arch=SMALL, window_size=settings['window_size'],
                       pretrained_window_sizes=settings['pretrained_window_sizes'])
    assert_matches_reference(lambda m, x: list(m(x)), model, case_ref['input'],
                             case_ref['outputs'], case_ref['reference_fp32_error'],
                             f'mmpretrain_swinv2 {case}')


@pytest.mark.parity
def test_timm_checkpoint_matches_timm_outputs(tmp_path):
    ref = load_fixture('timm_swinv2.pt')
    path = tmp_path / 'swinv2_tiny_window8_256.pth'
    torch.save(fp32(ref['state_dict']), path)
    case = ref['cases']['w8_256']
    model = pretrained(path, arch=SMALL, window_size=8)
    assert_matches_reference(stages_and_final_norm, model, case['input'],
                             [*case['stages'], case['final_norm']], case['reference_fp32_error'],
                             'timm_swinv2 w8_256 via init_cfg')
    # timm has a single final norm: the others start as the identity.
    assert torch.equal(model.norm0.weight, torch.ones(16))
    assert torch.equal(model.norm0.bias, torch.zeros(16))


@pytest.fixture(scope='module')
def hf_folder(tmp_path_factory):
    """A real HF model folder (config.json + model.safetensors) of a randomised Swinv2Model."""
    config = Swinv2Config(image_size=128, embed_dim=16, depths=[2, 2, 2, 2],
                          num_heads=[1, 2, 4, 8], window_size=8)
    hf = randomize_(Swinv2Model(config, add_pooling_layer=False), seed=3).eval()
    folder = tmp_path_factory.mktemp('swinv2-hf')
    hf.save_pretrained(folder)
    return hf, folder


@pytest.mark.parity
@pytest.mark.parametrize('which', ['folder', 'weights_file'])
def test_hf_folder_and_weights_file_match_hf_final_output(hf_folder, which):
    hf, folder = hf_folder
    path = folder if which == 'folder' else folder / 'model.safetensors'
    assert sorted(os.listdir(folder)) == ['config.json', 'model.safetensors']
    model = pretrained(path, arch=SMALL, window_size=8)
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    # (N, L, C) after the final layernorm
    theirs, hf_error = float64_reference(hf, x, lambda m, x: [m(x).last_hidden_state])
    assert_matches_reference(lambda m, x: [m(x)[3].flatten(2).transpose(1, 2)], model, x,
                             theirs, hf_error, f'HF {which}')


def test_whole_mmdet_checkpoint_with_training_logs_loads_backbone_only(tmp_path):
    """A checkpoint as MMEngine writes it: backbone./neck. keys, meta with numpy values and a
    message hub of HistoryBuffers (which torch>=2.6 refuses without our allow-list)."""
    from mmengine.logging import MessageHub
    source = randomize_(SwinTransformerV2(arch=SMALL, drop_path_rate=0.), seed=5).eval()
    hub = MessageHub.get_instance('test_checkpoints')
    hub.update_scalar('train/loss', 1.25)
    checkpoint = dict(
        meta=dict(epoch=3, seed=np.int64(7), dataset_meta=dict(classes=('a', 'b'))),
        state_dict={**{f'backbone.{k}': v for k, v in source.state_dict().items()},
                    'neck.lateral_convs.0.conv.weight': torch.zeros(4, 16, 1, 1),
                    'roi_head.bbox_head.fc_cls.weight': torch.zeros(3, 4)},
        message_hub=hub.state_dict())
    path = tmp_path / 'epoch_3.pth'
    torch.save(checkpoint, path)
    assert detect_layout(read_checkpoint(path).state_dict).name == 'mmdet'
    model = pretrained(path, arch=SMALL)
    x = torch.randn(1, 3, 70, 50)
    with torch.no_grad():
        for a, b in zip(model(x), source(x)):
            assert torch.equal(a, b)


def test_architecture_mismatch_names_it_and_loads_nothing(tmp_path):
    path = tmp_path / 'small.pth'
    torch.save(SwinTransformerV2(arch=SMALL).state_dict(), path)
    other = dict(SMALL, depths=(2, 2, 6, 2))
    model = SwinTransformerV2(arch=other, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=r'depths \[2, 2, 6, 2\] in config, '
                                              r'\[2, 2, 2, 2\] in checkpoint'):
        model.init_weights()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _load_logged(path, caplog, **kwargs):
    from mmswinv2.checkpoints import load_pretrained
    model = SwinTransformerV2(arch=SMALL, drop_path_rate=0., **kwargs).eval()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger='test_windows'):
        load_pretrained(model, str(path), logger=logging.getLogger('test_windows'))
    return model, caplog.text


def test_pretraining_windows_travel_with_the_checkpoint(tmp_path, official_ref, caplog):
    """An official checkpoint whose buffers say its position bias was trained at windows
    (12, 12, 12, 6), loaded into a window-24 backbone that does not set pretrained windows:
    they are adopted and logged, and the model is the one configured with them explicitly."""
    path = tmp_path / 'swinv2_12to16.pth'
    torch.save(official_checkpoint(official_ref, 'w16_256_pw12'), path)
    adopted, log = _load_logged(path, caplog, window_size=24)
    assert adopted.pretrained_window_sizes == (12, 12, 12, 6)
    assert ('was pretrained with windows [12, 12, 12, 6]; the model runs windows '
            '[24, 24, 24, 24]: pretrained_window_sizes=(12, 12, 12, 6)') in log
    explicit, _ = _load_logged(path, caplog, window_size=24,
                               pretrained_window_sizes=(12, 12, 12, 6))
    x = torch.randn(1, 3, 384, 384, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for a, b in zip(adopted(x), explicit(x)):
            assert torch.equal(a, b)


def test_configured_pretraining_windows_win_with_a_warning(tmp_path, official_ref, caplog):
    path = tmp_path / 'swinv2_12to16.pth'
    torch.save(official_checkpoint(official_ref, 'w16_256_pw12'), path)
    model, log = _load_logged(path, caplog, window_size=24, pretrained_window_sizes=8)
    assert model.pretrained_window_sizes == (8, 8, 8, 8)
    assert ('was pretrained with windows [12, 12, 12, 6], but the config sets '
            'pretrained_window_sizes=[8, 8, 8, 8]') in log
    assert 'WARNING' in log


@pytest.mark.parametrize('case, image_size, window, trained', [
    ('hf', 256, 16, [16, 16, 16, 8]),  # stage 4 (8x8) ran with an 8x8 window
    ('hf', 192, 12, [12, 12, 12, 6]),
    ('official', None, None, [8, 8, 8, 8]),
    ('timm', None, None, None),
])
def test_pretraining_windows_read_from_each_source(tmp_path, official_ref, caplog, case,
                                                   image_size, window, trained):
    if case == 'hf':
        config = Swinv2Config(image_size=image_size, embed_dim=16, depths=[2, 2, 2, 2],
                              num_heads=[1, 2, 4, 8], window_size=window)
        Swinv2Model(config, add_pooling_layer=False).save_pretrained(tmp_path / 'hf')
        path = tmp_path / 'hf'
    elif case == 'official':
        path = tmp_path / 'official.pth'
        torch.save(official_checkpoint(official_ref, 'w8_256'), path)
    else:
        path = tmp_path / 'timm.pth'
        torch.save(fp32(load_fixture('timm_swinv2.pt')['state_dict']), path)
    model, log = _load_logged(path, caplog, window_size=16)
    if trained is None:
        assert model.pretrained_window_sizes == (0, 0, 0, 0)
        assert 'does not record the windows it was pretrained with' in log
    else:
        assert list(model.pretrained_window_sizes) == trained


def test_output_norm_with_weight_but_no_bias_is_refused(tmp_path):
    """A norm the source model lacked is set to the identity only when all its keys are
    missing; a half-present one is a damaged file, not a reason to drop the half it has."""
    path = tmp_path / 'half_norm.pth'
    state_dict = SwinTransformerV2(arch=SMALL).state_dict()
    del state_dict['norm0.bias']
    torch.save(state_dict, path)
    model = SwinTransformerV2(arch=SMALL, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(CheckpointError, match=r"missing keys \['norm0.bias'\]"):
        model.init_weights()


def test_unknown_layout_lists_keys_and_known_formats(tmp_path):
    path = tmp_path / 'resnet.pth'
    torch.save({'conv1.weight': torch.zeros(1), 'fc.weight': torch.zeros(1)}, path)
    with pytest.raises(ValueError) as err:
        pretrained(path, arch=SMALL)
    message = str(err.value)
    assert 'unknown weight layout' in message and "'conv1.weight'" in message
    for name in ('official', 'timm', 'hf', 'mmpretrain', 'simmim', 'mmdet'):
        assert name in message


def test_empty_truncated_and_missing_files_fail_clearly(tmp_path):
    empty = tmp_path / 'empty.pth'
    empty.write_bytes(b'')
    good = tmp_path / 'good.pth'
    torch.save(SwinTransformerV2(arch=SMALL).state_dict(), good)
    truncated = tmp_path / 'truncated.pth'
    truncated.write_bytes(good.read_bytes()[:5000])
    for path, message in [(empty, 'the file is empty'), (truncated, 'truncated or corrupted'),
                          (tmp_path / 'nope.pth', 'no such file')]:
        with pytest.raises(CheckpointError, match=message) as err:
            read_checkpoint(path)
        assert str(path) in str(err.value)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ('touch PWNED_BY_PICKLE',))


def test_pickle_that_would_run_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / 'evil.pth'
    with open(path, 'wb') as f:
        torch.save({'state_dict': {'w': torch.zeros(1)}, 'payload': _RunsCode()}, f,
                   pickle_protocol=pickle.DEFAULT_PROTOCOL)
    with pytest.raises(CheckpointError, match=r'refused to load.*system') as err:
        read_checkpoint(path)
    assert str(path) in str(err.value)
    assert not (tmp_path / 'PWNED_BY_PICKLE').exists()


# The public HF checkpoints named in the checkpoints issue, by their published configs
# (large: depths reduced from [2, 2, 18, 2]; window and stage settings kept).
HF_SEEDS = {
    'microsoft/swinv2-tiny-patch4-window8-256': dict(
        embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=8,
        pretrained_window_sizes=[0, 0, 0, 0]),
    'microsoft/swinv2-tiny-patch4-window16-256': dict(
        embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=16,
        pretrained_window_sizes=[0, 0, 0, 0]),
    'microsoft/swinv2-large-patch4-window12to16-192to256-22kto1k-ft': dict(
        embed_dim=192, depths=[2, 2, 2, 2], num_heads=[6, 12, 24, 48], window_size=16,
        pretrained_window_sizes=[12, 12, 12, 6]),
}


def hf_stages_and_final_norm(hf_model, x):
    """HF's per-stage hidden states before patch merging (NCHW), then its final layernorm's
    output (N, L, C)."""
    def before_merge(output):  # Swinv2Stage -> (hidden, hidden before merging, dims, ...)
        hidden, dims = output[1], output[2]
        return hidden.view(hidden.shape[0], dims[0], dims[1], -1).permute(0, 3, 1, 2)
    stages, output = capture_outputs(hf_model.swinv2.encoder.layers,
                                     lambda: hf_model.swinv2(x), before_merge)
    return [*stages, output.last_hidden_state]


def stages_and_final_tokens(model, x):
    """Ours, as :func:`hf_stages_and_final_norm` gives HF's."""
    raw, outs = raw_stage_outputs(model, x)
    return [*raw, outs[3].flatten(2).transpose(1, 2)]


@pytest.mark.parity
@pytest.mark.parametrize('name', list(HF_SEEDS))
def test_public_hf_checkpoint_configs_load_with_stage_parity(tmp_path, name):
    from transformers import Swinv2ForImageClassification
    settings = HF_SEEDS[name]
    config = Swinv2Config(image_size=256, num_labels=1000, **settings)
    hf = randomize_(Swinv2ForImageClassification(config), seed=len(name)).eval()
    hf.save_pretrained(tmp_path / name.split('/')[1])
    model = pretrained(tmp_path / name.split('/')[1],
                       arch=dict(embed_dims=settings['embed_dim'], depths=settings['depths'],
                                 num_heads=settings['num_heads']),
                       window_size=settings['window_size'],
                       pretrained_window_sizes=settings['pretrained_window_sizes'])
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    theirs, hf_error = float64_reference(hf, x, hf_stages_and_final_norm)
    assert_matches_reference(stages_and_final_tokens, model, x, theirs, hf_error, f'HF {name}')


@pytest.fixture(scope='module')
def timm_cr():
    return load_fixture('timm_swinv2_cr.pt')


@pytest.mark.parity
def test_timm_cr_checkpoint_runs_with_cr_options_and_matches_timm(tmp_path, timm_cr):
    from mmswinv2.variants import TIMM_CR_SETTINGS
    path = tmp_path / 'swinv2_cr_tiny_ns_224.pth'
    torch.save(fp32(timm_cr['state_dict']), path)
    assert detect_layout(read_checkpoint(path).state_dict).name == 'timm_cr'
    assert timm_cr['meta']['window_size'] == (7, 7)
    model = pretrained(path, arch=SMALL, window_size=7, stage_end_norms=(0, 1, 2, 3),
                       **TIMM_CR_SETTINGS)
    assert_matches_reference(lambda m, x: raw_stage_outputs(m, x)[0], model, timm_cr['input'],
                             timm_cr['stages'], timm_cr['reference_fp32_error'], 'timm_swinv2_cr')


def test_timm_cr_checkpoint_into_official_backbone_names_the_options(tmp_path, timm_cr):
    from test_convert_checkpoint import convert_checkpoint
    path = tmp_path / 'swinv2_cr_tiny_ns_224.pth'
    torch.save(fp32(timm_cr['state_dict']), path)
    converted = tmp_path / 'converted.pth'
    assert convert_checkpoint.main([str(path), str(converted)]) == 0
    for source in (path, converted):  # the original, and ours (options recorded in its meta)
        model = SwinTransformerV2(arch=SMALL, window_size=7,
                                  init_cfg=dict(type='Pretrained', checkpoint=str(source)))
        with pytest.raises(CheckpointError, match=r'a timm_cr checkpoint; build the backbone '
                                                  r'with learnable_k_bias=True, cpb_hidden_dims'):
            model.init_weights()


def test_allow_list_survives_nested_use(tmp_path):
    """Our own checkpoint reading inside tools/train.py's allow-list (pretrained backbone, then
    --resume) must not drop the outer allow-list: torch's safe_globals is not re-entrant."""
    from mmengine.logging import MessageHub

    from mmswinv2.checkpoints import mmengine_checkpoints_allowed
    hub = MessageHub.get_instance('nested')
    hub.update_scalar('train/loss', 0.5)
    path = tmp_path / 'epoch_1.pth'
    torch.save(dict(state_dict={'w': torch.zeros(1)}, message_hub=hub.state_dict()), path)
    with mmengine_checkpoints_allowed():
        read_checkpoint(path)  # enters and leaves the allow-list itself
        torch.load(path, weights_only=True)  # MMEngine's own loading, still allowed
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)  # and nothing stays allowed afterwards


@pytest.mark.parity
def test_simmim_checkpoint_loads_its_encoder(tmp_path, official_ref):
    """A SimMIM pre-training checkpoint: the official SwinV2 under ``encoder.`` (plus
    ``encoder.mask_token``) next to the reconstruction ``decoder.``, in ``model``
    (microsoft/Swin-Transformer ``models/simmim.py``; ``utils_simmim`` strips ``encoder.``)."""
    official = official_checkpoint(official_ref, 'w8_256')['model']
    encoder = {f'encoder.{k}': v for k, v in official.items() if not k.startswith('head.')}
    checkpoint = {'model': {**encoder, 'encoder.mask_token': torch.zeros(1, 1, 16),
                            'decoder.0.weight': torch.zeros(3 * 32 * 32, 128, 1, 1),
                            'decoder.0.bias': torch.zeros(3 * 32 * 32)}}
    path = tmp_path / 'simmim_pretrain.pth'
    torch.save(checkpoint, path)
    assert_loads_to_official(path, official_ref, 'w8_256', 'simmim')
