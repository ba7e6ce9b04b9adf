"""Property-based tests (hypothesis): input sizes, damaged checkpoints, wrong arguments.

Each property runs a fixed number of examples (``EXAMPLES``), derandomized so the suite is
reproducible; run with ``--hypothesis-seed=N`` and a larger ``max_examples`` to search further.
"""
import math
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from mmswinv2 import SwinTransformerV2
from mmswinv2.checkpoints.formats import export_state_dict

from helpers import randomize_

EXAMPLES = dict(sizes=60, checkpoints=300, arguments=500)
FAST = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
TINY = dict(embed_dims=8, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2))
SMALL = dict(embed_dims=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8))


# --- input sizes --------------------------------------------------------------------------------

@settings(max_examples=EXAMPLES['sizes'], **FAST)
@given(h=st.integers(1, 2048), w=st.integers(1, 2048), window=st.integers(1, 24),
       patch=st.sampled_from([2, 4]), batch=st.integers(1, 2))
def test_any_input_size_gives_the_documented_shapes(h, w, window, patch, batch):
    model = SwinTransformerV2(arch=TINY, window_size=window, patch_size=patch).eval()
    with torch.no_grad():
        outs = model(torch.randn(batch, 3, h, w))
    side_h, side_w = math.ceil(h / patch), math.ceil(w / patch)
    for i, out in enumerate(outs):
        assert tuple(out.shape) == (batch, TINY['embed_dims'] * 2**i, side_h, side_w)
        assert torch.isfinite(out).all()
        side_h, side_w = math.ceil(side_h / 2), math.ceil(side_w / 2)


# --- damaged checkpoints ------------------------------------------------------------------------

def _checkpoints():
    """A valid checkpoint of the SMALL backbone in each layout the loader reads: name ->
    (object to save, file suffix)."""
    from parity import load_fixture
    from test_checkpoints import official_checkpoint
    ours = randomize_(SwinTransformerV2(arch=SMALL), seed=0).state_dict()
    official = official_checkpoint(load_fixture('official_swinv2.pt'), 'w8_256')
    return {
        'official': (official, '.pth'),
        'simmim': ({'model': {f'encoder.{k}': v for k, v in official['model'].items()}}, '.pth'),
        'timm': (export_state_dict(ours, 'timm'), '.pth'),
        'mmpretrain': ({'state_dict': export_state_dict(ours, 'mmpretrain')}, '.pth'),
        'mmdet': ({'state_dict': {f'backbone.{k}': v for k, v in ours.items()},
                   'meta': dict(epoch=1)}, '.pth'),
        'mmswinv2': ({'state_dict': ours, 'meta': dict(source_format='timm')}, '.pth'),
        'hf': ({f'swinv2.{k}': v for k, v in _hf_state_dict().items()}, '.safetensors'),
    }


def _hf_state_dict():
    from transformers import Swinv2Config, Swinv2Model
    config = Swinv2Config(image_size=64, embed_dim=16, depths=[2, 2, 2, 2],
                          num_heads=[1, 2, 4, 8], window_size=8)
    return randomize_(Swinv2Model(config, add_pooling_layer=False), seed=1).state_dict()


def _save(obj, path):
    if str(path).endswith('.safetensors'):
        save_file({k: v.contiguous() for k, v in obj.items()}, str(path))
    else:
        torch.save(obj, path)


def _weights_key(obj):
    """Where the flat weight dict sits in a saved object (as read_checkpoint finds it)."""
    return next((key for key in ('state_dict', 'model') if isinstance(obj.get(key), dict)), None)


def _load(path):
    """``(model, error)``: a SMALL backbone after loading ``path`` through ``init_cfg``; error is
    the CheckpointError / ValueError raised, after checking it names the file and that no
    parameter changed."""
    model = SwinTransformerV2(arch=SMALL, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        model.init_weights()
    except ValueError as err:  # CheckpointError is a ValueError
        assert str(path) in str(err), f'{type(err).__name__} does not name the file: {err}'
        after = model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before), 'partially loaded'
        return model, err
    return model, None


class _Files(dict):
    def __repr__(self):  # hypothesis prints its arguments with a falsifying example
        return f'<valid checkpoints: {", ".join(self)}>'


@pytest.fixture(scope='module')
def valid_files(tmp_path_factory):
    """name -> (saved object, path, state dict of a model that loaded it)."""
    folder = tmp_path_factory.mktemp('fuzz_checkpoints')
    files = _Files()
    for name, (obj, suffix) in _checkpoints().items():
        path = folder / f'{name}{suffix}'
        _save(obj, path)
        model, error = _load(path)
        assert error is None, f'{name}: {error}'
        files[name] = (obj, path, model.state_dict())
    return files


@settings(max_examples=EXAMPLES['checkpoints'], **FAST)
@given(data=st.data())
def test_damaged_checkpoints_fail_with_the_file_named_and_nothing_loaded(valid_files, data,
                                                                         tmp_path_factory):
    """Truncated, bytes flipped, a tensor of a wrong dtype or shape, keys dropped: loading
    succeeds, or fails with CheckpointError / ValueError naming the file and changes nothing.
    A wrong dtype or shape is never loaded: it fails, or the tensor is one the converter drops
    (classifier head, regenerable buffers) and the model equals the undamaged load."""
    name = data.draw(st.sampled_from(sorted(valid_files)), label='format')
    obj, path, valid = valid_files[name]
    damage = data.draw(st.sampled_from(['truncate', 'flip_bytes', 'dtype', 'shape', 'drop_keys']),
                       label='damage')
    target = tmp_path_factory.mktemp('damaged') / os.path.basename(path)
    if damage in ('truncate', 'flip_bytes'):
        raw = bytearray(path.read_bytes())
        if damage == 'truncate':
            raw = raw[:data.draw(st.integers(0, len(raw) - 1), label='keep bytes')]
        else:
            for offset in data.draw(st.lists(st.integers(0, len(raw) - 1), min_size=1,
                                             max_size=8), label='offsets'):
                raw[offset] ^= data.draw(st.integers(1, 255), label='xor')
        target.write_bytes(bytes(raw))
        _load(target)
        return
    key_of_weights = _weights_key(obj)
    weights = dict(obj[key_of_weights] if key_of_weights else obj)
    if damage == 'drop_keys':
        for key in data.draw(st.lists(st.sampled_from(sorted(weights)), min_size=1, max_size=5,
                                      unique=True), label='dropped'):
            del weights[key]
    else:
        key = data.draw(st.sampled_from(sorted(k for k, v in weights.items()
                                               if v.is_floating_point())), label='key')
        value = weights[key]
        if damage == 'dtype':
            weights[key] = value.to(data.draw(st.sampled_from(
                [torch.int64, torch.int32, torch.uint8, torch.bool]), label='dtype'))
        else:
            weights[key] = torch.zeros(*value.shape[:-1], value.shape[-1] + 1)
    _save({**obj, key_of_weights: weights} if key_of_weights else weights, target)
    model, error = _load(target)
    if error is None and damage != 'drop_keys':
        loaded = model.state_dict()
        assert all(torch.equal(loaded[k], valid[k]) for k in valid), \
            f'{name}: {damage} damage to {key} was loaded'


# --- wrong arguments ----------------------------------------------------------------------------

NOT_INT = st.one_of(st.text(max_size=3), st.floats(allow_nan=True), st.none(), st.booleans(),
                    st.lists(st.integers(), max_size=2))
NOT_BOOL = st.one_of(st.integers(), st.text(max_size=3), st.none(), st.floats())
NOT_RATE = st.one_of(st.floats().filter(lambda r: not 0 <= r < 1), st.text(max_size=3),
                     st.none(), st.booleans(), st.lists(st.floats(0, 0.5), max_size=2))


def _per_stage_wrong(minimum):
    return st.one_of(
        st.integers(max_value=minimum - 1), NOT_INT.filter(lambda v: not isinstance(v, list)),
        st.lists(st.integers(minimum, 24), max_size=6).filter(lambda v: len(v) != 4),
        st.lists(st.integers(max_value=minimum - 1), min_size=4, max_size=4),
        st.lists(st.sampled_from(['8', 8.0, None]), min_size=4, max_size=4))


def _indices_wrong():
    return st.one_of(
        st.integers().filter(lambda i: not -4 <= i < 4), st.text(min_size=1, max_size=3),
        st.none(), st.floats(),
        st.lists(st.integers(0, 3), min_size=2, max_size=4).filter(lambda v: v != sorted(set(v))),
        st.lists(st.integers().filter(lambda i: not -4 <= i < 4), min_size=1, max_size=3))


WRONG_ARGUMENTS = {
    'arch': st.one_of(st.text(max_size=6).filter(lambda a: a.lower() not in (
        'tiny', 'small', 'base', 'large', 'huge', 'giant', 't', 's', 'b', 'l', 'h', 'g')),
        st.integers(), st.none(),
        st.fixed_dictionaries(dict(embed_dims=st.integers(max_value=0), depths=st.just([2] * 4),
                                   num_heads=st.just([1] * 4))),
        st.fixed_dictionaries(dict(embed_dims=st.just(16), depths=st.integers(),
                                   num_heads=st.just([1] * 4))),
        st.fixed_dictionaries(dict(embed_dims=st.just(16), depths=st.just([2] * 4)))),
    'patch_size': st.one_of(st.integers(max_value=0), NOT_INT),
    'in_channels': st.one_of(st.integers(max_value=0), NOT_INT),
    'window_size': _per_stage_wrong(1),
    'pretrained_window_sizes': _per_stage_wrong(0).filter(lambda v: v is not None),  # None: unset
    'mlp_ratio': st.one_of(st.floats(max_value=0), st.text(max_size=3), st.none(),
                           st.booleans(), st.just(float('nan')), st.just(float('inf'))),
    'qkv_bias': NOT_BOOL,
    'drop_rate': NOT_RATE,
    'attn_drop_rate': NOT_RATE,
    'drop_path_rate': NOT_RATE,
    'out_indices': _indices_wrong(),
    'frozen_stages': st.one_of(st.integers().filter(lambda i: not -1 <= i <= 4), NOT_INT),
    'norm_eval': NOT_BOOL,
    'with_cp': NOT_BOOL,
    'fused_attention': NOT_BOOL,
    'attn_chunk_windows': st.one_of(st.integers(max_value=-1), NOT_INT),
    'learnable_k_bias': NOT_BOOL,
    'cpb_hidden_dims': st.one_of(st.integers(max_value=0), NOT_INT),
    'cpb_output_bias': NOT_BOOL,
    'cpb_bounded': NOT_BOOL,
    'cpb_coords': st.one_of(
        st.text(max_size=8).filter(lambda c: c not in ('normalized_log2', 'log')),
        st.integers(), st.none()),
    'merge_norm_first': NOT_BOOL,
    'extra_norm_every_n_blocks': st.one_of(st.integers(max_value=-1),
                                           NOT_INT.filter(lambda v: v is not None)),  # None: arch's
    'cpu_inference': NOT_BOOL,
    'stage_end_norms': _indices_wrong(),
}


@settings(max_examples=EXAMPLES['arguments'], **FAST)
@given(data=st.data())
def test_wrong_argument_values_raise_value_error_naming_the_argument(data):
    name = data.draw(st.sampled_from(sorted(WRONG_ARGUMENTS)), label='argument')
    value = data.draw(WRONG_ARGUMENTS[name], label='value')
    kwargs = {name: value} if name == 'arch' else dict(arch=SMALL, **{name: value})
    with pytest.raises(ValueError) as err:
        SwinTransformerV2(**kwargs)
    assert name in str(err.value), str(err.value)
