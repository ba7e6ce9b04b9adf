"""A training run killed (SIGKILL) at the points where users lose runs — mid-iteration, inside a
checkpoint write, between the checkpoint and ``last_checkpoint`` — then restarted with
``tools/train.py --resume``, finishes with the same iteration count and the same final
weights as a run never interrupted; a truncated or empty resume point is set aside, named.

The run: the real UperNet SwinV2 config on generated data, 8 iterations, a checkpoint every
2, deterministic (``randomness=dict(seed=0, deterministic=True)``)."""
import os
import subprocess
import sys

import pytest
import torch

from e2e_helpers import ROOT, logged_losses, make_demo_data, run_tool

CONFIG = os.path.join(ROOT, 'configs', 'seg', 'upernet_swinv2_tiny_ade20k.py')
ITERS = 8


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp('resume')
    make_demo_data(root / 'data', n_train=6, n_val=2, seed=3)
    config = root / 'upernet_resume.py'
    config.write_text(f'''
_base_ = {CONFIG!r}
data_root = {str(root / 'data' / 'ade')!r}
crop_size = (96, 96)
model = dict(data_preprocessor=dict(size=crop_size),
             backbone=dict(init_cfg=None, arch=dict(_delete_=True, embed_dims=24,
                           depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8])),
             decode_head=dict(in_channels=[24, 48, 96, 192], channels=32),
             auxiliary_head=dict(in_channels=96, channels=16))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(256, 96), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(batch_size=2, num_workers=1, persistent_workers=False,
                        dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
train_cfg = dict(max_iters={ITERS}, val_interval=1000)
param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=4)]
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=2))
randomness = dict(seed=0, deterministic=True)
''')
    return root, config


def train(config, work, *extra, kill=None):
    """tools/train.py; with ``kill=(point, iteration)`` the run SIGKILLs itself there."""
    if kill is None:
        return run_tool(['tools/train.py', str(config), '--work-dir', str(work), *extra])
    point, iteration = kill
    killing = work.parent / f'{work.name}_kill.py'
    killing.write_text(f'''
_base_ = {str(config)!r}
custom_imports = dict(imports=['mmswinv2', 'faults'], allow_failed_imports=False)
custom_hooks = [dict(type='KillAt', point={point!r}, iteration={iteration})]
''')
    args = ['tools/train.py', str(killing), '--work-dir', str(work), *extra]
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([ROOT, os.path.dirname(__file__)])}
    result = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == -9, (result.returncode, (result.stdout + result.stderr)[-3000:])
    return result.stdout + result.stderr


def final_weights(work):
    path = os.path.join(work, f'iter_{ITERS}.pth')
    return torch.load(path, map_location='cpu', weights_only=False)['state_dict']


@pytest.fixture(scope='module')
def uninterrupted(setup):
    root, config = setup
    out = train(config, root / 'uninterrupted')
    assert len(logged_losses(out)) == ITERS
    return final_weights(root / 'uninterrupted')


def assert_same_weights(work, expected):
    got = final_weights(work)
    assert got.keys() == expected.keys()
    differing = [k for k in got if not torch.equal(got[k], expected[k])]
    assert not differing, (f'{len(differing)} of {len(got)} tensors differ, e.g. {differing[0]}: '
                           f'max |diff| {(got[differing[0]] - expected[differing[0]]).abs().max()}')


@pytest.mark.parametrize('point,iteration,resumed_from', [
    ('forward', 5, 4),  # mid-iteration 5: iterations 1-4 are in iter_4.pth
    ('checkpoint_write', 4, 2),  # inside iter_4.pth's write: iter_2.pth stays the resume point
    ('last_checkpoint', 4, 2),  # iter_4.pth whole, last_checkpoint still naming iter_2.pth
])
def test_killed_run_resumes_to_the_same_weights(setup, uninterrupted, point, iteration,
                                                resumed_from):
    root, config = setup
    work = root / f'killed_{point}'
    train(config, work, kill=(point, iteration))
    assert not (work / f'iter_{ITERS}.pth').exists()
    if point == 'checkpoint_write':
        assert not (work / 'iter_4.pth').exists()  # only the temporary file was written
        assert list(work.glob('.iter_4.pth.*.partial'))
    if point == 'last_checkpoint':
        assert (work / 'iter_4.pth').exists()
        assert (work / 'last_checkpoint').read_text().strip().endswith('iter_2.pth')
    out = train(config, work, '--resume')
    assert f'resumed epoch: 0, iter: {resumed_from}' in out, out[-3000:]
    assert len(logged_losses(out)) == ITERS - resumed_from
    assert_same_weights(work, uninterrupted)


@pytest.mark.parametrize('damage', ['truncated', 'empty'])
def test_a_damaged_resume_point_is_named_and_the_previous_checkpoint_used(setup, uninterrupted,
                                                                          damage):
    root, config = setup
    work = root / f'damaged_{damage}'
    train(config, work, kill=('forward', 7))  # iter_6.pth is the resume point
    target = work / 'iter_6.pth'
    content = target.read_bytes()
    target.write_bytes(content[:len(content) // 2] if damage == 'truncated' else b'')
    out = train(config, work, '--resume')
    reason = 'is truncated or not a torch checkpoint' if damage == 'truncated' else 'is empty'
    assert f'names {target}, which {reason}' in out, out[-3000:]
    assert f'resuming from {work / "iter_4.pth"}, the newest whole checkpoint' in out
    assert 'resumed epoch: 0, iter: 4' in out
    assert_same_weights(work, uninterrupted)


def test_an_explicit_damaged_checkpoint_is_refused_by_name(setup, tmp_path):
    root, config = setup
    broken = tmp_path / 'iter_2.pth'
    broken.write_bytes(b'PK\x03\x04 half a zip')
    result = subprocess.run([sys.executable, 'tools/train.py', str(config), '--work-dir',
                             str(tmp_path / 'work'), '--resume', str(broken)], cwd=ROOT,
                            env={**os.environ, 'PYTHONPATH': ROOT}, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode != 0
    assert f'--resume {broken}: the file is truncated or not a torch checkpoint' in result.stderr
