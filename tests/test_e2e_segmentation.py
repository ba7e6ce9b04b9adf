"""End to end with the real tools and the real UperNet SwinV2-T config, on a tiny dataset in the
ADE20K layout generated here (JPEG images, PNG label maps, 0 = unlabeled, reduce_zero_label)."""
import os
import re
import sys

import pytest
import torch

from e2e_helpers import ROOT, logged_losses, make_demo_data, run_tool

CONFIG = os.path.join(ROOT, 'configs', 'seg', 'upernet_swinv2_tiny_ade20k.py')


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    """Tiny dataset and a derived config that changes only the data root, the crop size (with
    the resize scales that go with it) and the iteration counts."""
    root = tmp_path_factory.mktemp('seg_e2e')
    make_demo_data(root / 'data', n_train=4, n_val=2, seed=2)
    config = root / 'upernet_tiny_data.py'
    config.write_text(f'''
_base_ = {CONFIG!r}
data_root = {str(root / 'data' / 'ade')!r}
crop_size = (128, 128)
model = dict(data_preprocessor=dict(size=crop_size), backbone=dict(init_cfg=None))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='mmswinv2.CheckSegAnnotation', num_classes=150),
    dict(type='RandomResize', scale=(512, 128), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(512, 128), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='mmswinv2.CheckSegAnnotation', num_classes=150),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
train_cfg = dict(max_iters=4, val_interval=4)
param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=2)]
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=4))
''')
    return root, config


@pytest.fixture(scope='module')
def trained(setup):
    """The work dir of a 4-iteration training run of the derived config."""
    root, config = setup
    work = root / 'work'
    out = run_tool(['tools/train.py', str(config), '--work-dir', str(work)])
    losses = logged_losses(out)
    assert len(losses) == 4 and all(v == v and abs(v) != float('inf') for v in losses)
    assert (work / 'iter_4.pth').exists()
    return work


def test_train_then_test_and_tta(setup, trained):
    root, config = setup
    work = trained
    out = run_tool(['tools/test.py', str(config), str(work / 'iter_4.pth'),
                    '--work-dir', str(root / 'test'), '--out', str(root / 'pred')])
    assert re.search(r'mIoU: [0-9.]+', out) and re.search(r'aAcc: [0-9.]+', out)
    assert len(list((root / 'pred').glob('*.png'))) == 2

    out = run_tool(['tools/test.py', str(config), str(work / 'iter_4.pth'),
                    '--work-dir', str(root / 'tta'), '--tta'])
    assert re.search(r'mIoU: [0-9.]+', out) and re.search(r'mAcc: [0-9.]+', out)
    assert 'per class results' in out


def test_train_under_torchrun_with_two_cpu_processes(setup):
    root, config = setup
    out = run_tool(['tools/train.py', str(config), '--work-dir', str(root / 'dist'),
                    '--cfg-options', 'train_cfg.max_iters=2', 'train_cfg.val_interval=10'],
                   launcher=2)
    [log] = (root / 'dist').glob('*/*.log')
    log = log.read_text()
    assert 'Distributed launcher: pytorch' in log and 'Distributed training: True' in log
    assert 'SyncBN layers built as BN' in out
    assert len(logged_losses(log)) == 2 and (root / 'dist' / 'iter_2.pth').exists()


TEARDOWN_SCRIPT = """
import atexit, os, torch
from mmswinv2.launch import run


def gloo_threads():
    tasks = os.listdir('/proc/self/task')
    names = [open(f'/proc/self/task/{{t}}/comm').read().strip() for t in tasks]
    return sorted(name for name in names if 'gloo' in name)


atexit.register(lambda: print('at exit:', gloo_threads()))  # runs after run()'s teardown
torch.distributed.init_process_group('gloo', init_method={store!r}, rank=0, world_size=1)


class Runner:
    # like MMEngine's: a reference cycle (hooks and loops hold the runner) that holds the
    # DDP-wrapped model, and through it the process group
    def __init__(self):
        self.model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 2))
        self.hooks = [self]

    def train(self):
        self.model(torch.randn(3, 4)).sum().backward()


run(Runner().train)
print('after run:', gloo_threads())
"""


def test_distributed_tools_stop_gloo_threads_before_interpreter_exit(tmp_path):
    """A tool's process group and its gloo threads, which the runner's DDP wrapper keeps alive
    after ``destroy_process_group``, are gone by the time the interpreter finalizes (where those
    threads aborted a finished process in CI's 2-process run)."""
    script = tmp_path / 'teardown.py'
    script.write_text(TEARDOWN_SCRIPT.format(store=f'file://{tmp_path}/store'))
    output = run_tool([str(script)], timeout=120)
    lines = dict(line.split(': ', 1) for line in output.splitlines()
                 if line.startswith(('after run: ', 'at exit: ')))
    assert 'pt_gloo_runloop' in lines['after run']  # alive while the runner is
    assert lines['at exit'] == '[]'


def test_compile_config_key_trains_with_a_compiled_backbone(setup):
    """MMEngine's ``compile=True``: the backbone is compiled with torch.compile's defaults
    (Inductor's generated code, forward and backward), training runs, and the checkpoint keeps
    the plain state-dict keys (``nn.Module.compile`` works in place). No validation: MMEngine
    validates after the last iteration, and each new image size would compile again."""
    root, config = setup
    work = root / 'compiled'
    out = run_tool(['tools/train.py', str(config), '--work-dir', str(work), '--cfg-options',
                    'compile=True', 'train_cfg.max_iters=2', 'val_cfg=None',
                    'val_dataloader=None', 'val_evaluator=None'])
    assert "compile: the backbone (SwinTransformerV2) is compiled with torch.compile()" in out
    losses = logged_losses(out)
    assert len(losses) == 2 and all(v == v and abs(v) != float('inf') for v in losses)
    state = torch.load(work / 'iter_2.pth', weights_only=False)['state_dict']
    assert 'backbone.patch_embed.proj.weight' in state
    assert not any('_orig_mod' in key for key in state)


def test_window_sweep_evaluates_each_test_window(setup, trained):
    """tools/analysis/window_sweep.py at the trained window reproduces tools/test.py's mIoU; the
    table, JSON and plot are written, and the plot is not blank."""
    import json

    import numpy as np
    from PIL import Image
    root, config = setup
    out = run_tool(['tools/test.py', str(config), str(trained / 'iter_4.pth'),
                    '--work-dir', str(root / 'test_w8')])
    miou = float(re.findall(r'mIoU: ([0-9.]+)', out)[-1])
    sweep = root / 'sweep'
    out = run_tool(['tools/analysis/window_sweep.py', str(config), str(trained / 'iter_4.pth'),
                    '--windows', '8', '4', '16', '--work-dir', str(sweep)])
    results = json.loads((sweep / 'window_sweep.json').read_text())
    assert results['trained_window_sizes'] == [8, 8, 8, 8]
    assert sorted(results['results']) == ['16', '4', '8']
    assert abs(results['results']['8']['mIoU'] - miou) < 0.01  # printed with 2 decimals
    table = (sweep / 'window_sweep.md').read_text()
    assert '| window | mIoU | mAcc | aAcc |' in table and table.count('\n| ') >= 4
    picture = np.asarray(Image.open(sweep / 'window_sweep.png').convert('L'), dtype=float)
    assert picture.shape[0] > 100 and picture.std() > 10


def test_window_sweep_rejects_bad_windows(setup, trained):
    import subprocess
    root, config = setup
    result = subprocess.run([sys.executable, 'tools/analysis/window_sweep.py', str(config),
                             str(trained / 'iter_4.pth'), '--windows', '0', '8'], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert '--windows: windows must be positive integers, got [0]' in result.stderr
