"""A loss that stops being finite: training stops with the iteration, the loss terms and the
learning rate (plain optimizer), or the dynamic loss scale skips the step and the run stops
only when the skips do not end (AMP). And the demo segmenter trains under fp16 autocast on
the CPU with finite losses (the attention logits stay in fp32)."""
import copy
import itertools
import math
import os
import subprocess
import sys
import types
from unittest import mock

import pytest
import torch
import torch.nn as nn
from mmengine.logging import MMLogger

from e2e_helpers import ROOT, logged_losses, make_demo_data
from mmswinv2.engine import NonFiniteLossError, NonFiniteLossHook

SEG_CONFIG = os.path.join(ROOT, 'configs', 'seg', 'demo_upernet_swinv2_shapes.py')


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp('finite')
    make_demo_data(root / 'data', n_train=4, n_val=2, seed=5)
    return root / 'data' / 'ade'


def test_a_nan_loss_stops_training_naming_iteration_terms_and_lr(data, tmp_path):
    options = [f'{split}_dataloader.dataset.data_root={data}' for split in ('train', 'val')]
    options += ['train_cfg.max_iters=6', 'train_cfg.val_interval=100',
                'default_hooks.logger.interval=1', 'train_dataloader.batch_size=2',
                'train_dataloader.num_workers=0', 'val_dataloader.num_workers=0',
                'val_dataloader.persistent_workers=False',
                'train_dataloader.persistent_workers=False']
    config = tmp_path / 'nan_at_3.py'
    config.write_text(f'''
_base_ = {SEG_CONFIG!r}
custom_imports = dict(imports=['mmswinv2', 'faults'], allow_failed_imports=False)
custom_hooks = [dict(type='NanWeightAt', iteration=3)]
''')
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([ROOT, os.path.dirname(__file__)])}
    result = subprocess.run([sys.executable, 'tools/train.py', str(config), '--work-dir',
                             str(tmp_path / 'work'), '--cfg-options', *options], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert 'Traceback' not in result.stderr  # one message, not a stack
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith('error: iteration 3: the loss is not finite (loss=nan, '), message
    assert 'decode.loss_ce=nan' in message and 'aux.loss_ce=' in message
    assert 'lr ' in message and 'Resume from the last checkpoint' in message
    assert len(logged_losses(output)) == 2  # iterations 1 and 2 logged, finite


def amp_wrapper(model, dtype):
    """MMEngine's AmpOptimWrapper on the CPU: its constructor refuses a machine without a GPU,
    so it is built as if one were there, then given torch's CPU GradScaler."""
    from mmengine.optim import AmpOptimWrapper
    with mock.patch('mmengine.optim.optimizer.amp_optimizer_wrapper.is_cuda_available',
                    return_value=True):
        wrapper = AmpOptimWrapper(optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                                  dtype=dtype)
    wrapper.loss_scaler = torch.amp.GradScaler('cpu', init_scale=2.**10)
    return wrapper


@pytest.mark.parametrize('dtype', ['bfloat16'])  # MMEngine's CPU autocast refuses fp16
def test_under_a_dynamic_loss_scale_non_finite_steps_are_skipped_then_stop(dtype):
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    wrapper = amp_wrapper(model, dtype)
    runner = types.SimpleNamespace(iter=0, optim_wrapper=wrapper)
    hook = NonFiniteLossHook(max_skipped_steps=3)
    x = torch.randn(8, 4)

    def step(poison):
        with wrapper.optim_context(model):
            loss = model(x).float().pow(2).mean() * (math.inf if poison else 1.)
        wrapper.update_params(loss)
        terms = dict(loss=loss.detach(), loss_a=loss.detach())
        hook.after_train_iter(runner, runner.iter, outputs=terms)
        runner.iter += 1

    step(False)
    before = [p.detach().clone() for p in model.parameters()]
    logger = MMLogger.get_current_instance()
    with mock.patch.object(logger, 'warning') as warned, \
            mock.patch.object(logger, 'log') as logged:
        step(True)
        step(True)
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # skipped
        assert wrapper.loss_scaler.get_scale() == 2.**8  # halved at each skip
        step(False)  # a finite step resets the count
        assert hook.skipped == 0
        step(True)
        step(True)
        with pytest.raises(NonFiniteLossError, match=r'iteration 7: the loss is not finite '
                           r'\(loss=inf, loss_a=inf\), lr 0.1: 3 steps in a row'):
            step(True)
    messages = [str(c) for c in warned.call_args_list + logged.call_args_list]
    assert any('iteration 2: the loss is not finite (loss=inf, loss_a=inf), lr 0.1; the loss '
               'scaler skipped the step (scale now 512; 1 in a row)' in m for m in messages), \
        messages


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match='max_skipped_steps must be a positive integer'):
        NonFiniteLossHook(max_skipped_steps=0)


def test_the_demo_segmenter_trains_under_fp16_autocast_with_finite_losses(data):
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    from mmengine.runner import Runner
    from mmseg.registry import MODELS
    cfg = Config.fromfile(SEG_CONFIG)
    loader_cfg = dict(cfg.train_dataloader, num_workers=0, persistent_workers=False,
                      batch_size=2)
    loader_cfg['dataset'] = dict(cfg.train_dataloader.dataset, data_root=str(data))
    with DefaultScope.overwrite_default_scope('mmseg'):
        torch.manual_seed(0)
        model = MODELS.build(cfg.model)
        model.init_weights()
        loader = Runner.build_dataloader(loader_cfg, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    scaler = torch.amp.GradScaler('cpu')  # what AmpOptimWrapper does on a GPU
    before = copy.deepcopy(model.state_dict())
    model.train()
    losses, scales = [], []
    for _, batch in zip(range(4), itertools.cycle(loader)):
        data_batch = model.data_preprocessor(batch, True)
        with torch.autocast('cpu', dtype=torch.float16):
            loss, _ = model.parse_losses(model(**data_batch, mode='loss'))
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        losses.append(loss.item())
        scales.append(scaler.get_scale())
    assert all(math.isfinite(v) for v in losses), losses
    assert scales[-1] == scales[-2], scales  # the last step was applied, not skipped
    after = model.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values())
    assert not torch.equal(after['backbone.stages.0.blocks.0.attn.qkv.weight'],
                           before['backbone.stages.0.blocks.0.attn.qkv.weight'])
