"""What tools/train.py and tools/test.py share: loading a config the OpenMMLab way and the few
environment fixes this stack needs. Detection and segmentation are told apart by the config's
``default_scope`` (``mmdet`` / ``mmseg``), which their base runtime configs set."""
import argparse
import os
import os.path as osp
from typing import Callable, Optional, TypeVar

import torch
from mmengine.config import Config, DictAction
from mmengine.logging import print_log

from .checkpoints import mmengine_checkpoints_allowed

CODEBASES = ('mmdet', 'mmseg')
T = TypeVar('T')


def add_launch_arguments(parser: argparse.ArgumentParser, example: str) -> None:
    """The options both tools share: ``--cfg-options``, ``--launcher``, ``--local_rank``."""
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help=f'override config settings, e.g. {example}')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def parse_launch_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parse, and export ``LOCAL_RANK`` for launchers that pass ``--local_rank`` instead."""
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def build_runner(cfg: Config):
    """MMEngine's Runner for ``cfg`` (``runner_type`` honoured), after the CPU launcher fixes."""
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    setup_distributed_on_cpu(cfg)
    return Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)


def build_model(cfg: Config, codebase: str):
    """``cfg.model`` built in its codebase's registry (no weights are loaded)."""
    import importlib

    from mmengine.registry import DefaultScope, init_default_scope
    init_default_scope(codebase)
    registry = importlib.import_module(f'{codebase}.registry').MODELS
    with DefaultScope.overwrite_default_scope(codebase):
        return registry.build(cfg.model)


def run(step: Callable[[], T]) -> T:
    """``runner.train`` / ``runner.test`` with MMEngine's own checkpoints loadable, then the
    process group (if any) destroyed: left to interpreter exit, gloo's threads can abort a
    finished process (SIGABRT, "terminate called without an active exception"; seen in a
    2-process CPU run, pytorch/pytorch#190489)."""
    try:
        with mmengine_checkpoints_allowed():
            return step()
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def load_config(path: str, cfg_options: Optional[dict], work_dir: Optional[str],
                launcher: str) -> Config:
    """``Config.fromfile`` + ``--cfg-options`` + ``--work-dir`` (default ``work_dirs/<name>``)."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'config file not found: {path}')
    cfg = Config.fromfile(path)
    cfg.launcher = launcher
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(path))[0])
    codebase_of(cfg, path)
    check_backbone_channels(cfg, path)
    return cfg


def codebase_of(cfg: Config, path: str = 'config') -> str:
    scope = cfg.get('default_scope')
    if scope not in CODEBASES:
        raise ValueError(f'{path}: default_scope is {scope!r}; these tools run MMDetection '
                         f'(mmdet) and MMSegmentation (mmseg) configs, whose base runtime '
                         f'configs set it')
    return scope


def check_backbone_channels(cfg: Config, path: str = 'config') -> None:
    """Fail before building when the neck / decode heads expect other channels than the SwinV2
    backbone produces (the detector would otherwise fail mid-forward with a conv shape error)."""
    backbone = cfg.model.get('backbone', {})
    if not str(backbone.get('type', '')).endswith('SwinTransformerV2'):
        return
    from .models.swin_transformer_v2 import _arch_settings, _check_out_indices
    settings = _arch_settings(backbone.get('arch', 'tiny'))
    stages = len(settings['depths'])
    out_indices = _check_out_indices(backbone.get('out_indices', (0, 1, 2, 3)), stages)
    produced = [settings['embed_dims'] * 2**i for i in out_indices]
    described = (f"model.backbone ({backbone['type']}, arch {backbone.get('arch', 'tiny')!r}, "
                 f"out_indices {list(out_indices)}) outputs channels {produced}")
    consumers = [('model.neck', cfg.model.get('neck')),
                 ('model.decode_head', cfg.model.get('decode_head')),
                 ('model.auxiliary_head', cfg.model.get('auxiliary_head'))]
    for name, head in consumers:
        if not isinstance(head, dict) or 'in_channels' not in head:
            continue
        expected = head['in_channels']
        if 'in_index' in head:  # mmseg heads pick outputs by index
            index = head['in_index']
            try:
                got = ([produced[i] for i in index] if isinstance(index, (list, tuple))
                       else produced[index])
            except IndexError:
                raise ValueError(f'{path}: {name}.in_index {index} selects outputs the backbone '
                                 f'does not have; {described}') from None
        else:
            got = produced
        if _as_list(expected) != _as_list(got):
            raise ValueError(f'{path}: {name}.in_channels {expected} do not match {described}'
                             + (f" (in_index {head['in_index']} selects {got})"
                                if 'in_index' in head else ''))


def _as_list(value):
    return list(value) if isinstance(value, (list, tuple)) else [value]


def setup_distributed_on_cpu(cfg: Config) -> None:
    """``--launcher pytorch`` without CUDA (e.g. ``torchrun --nproc_per_node=2`` on CPU).

    MMEngine's launcher calls ``torch.cuda.set_device``, so the gloo process group is initialised
    here first (MMEngine then keeps it); DDP gets ``device_ids=None``; and SyncBN, which only
    runs on GPUs when a process group exists, becomes BN.
    """
    if cfg.launcher != 'pytorch' or torch.cuda.is_available():
        return
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend='gloo')
    cfg.model_wrapper_cfg = dict(type='MMDistributedDataParallel', device_ids=None)
    replaced = _replace_type(cfg.model, 'SyncBN', 'BN')
    if replaced:
        print_log(f'CPU distributed run: {replaced} SyncBN layers built as BN', logger='current')


def _replace_type(node, old: str, new: str) -> int:
    count = 0
    if isinstance(node, dict):
        if node.get('type') == old:
            node['type'] = new
            count += 1
        for value in node.values():
            count += _replace_type(value, old, new)
    elif isinstance(node, (list, tuple)):
        for value in node:
            count += _replace_type(value, old, new)
    return count


def add_repo_to_path() -> None:
    """Make ``custom_imports=dict(imports=['mmswinv2'])`` work from a source checkout, and from
    worker processes started by torchrun."""
    root = osp.abspath(osp.join(osp.dirname(__file__), '..'))
    paths = os.environ.get('PYTHONPATH', '').split(os.pathsep)
    if root not in paths:
        os.environ['PYTHONPATH'] = os.pathsep.join([root] + [p for p in paths if p])


