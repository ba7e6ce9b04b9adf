"""What tools/train.py and tools/test.py share: loading a config the OpenMMLab way and the few
environment fixes this stack needs. Detection and segmentation are told apart by the config's
``default_scope`` (``mmdet`` / ``mmseg``), which their base runtime configs set."""
import argparse
import atexit
import functools
import gc
import importlib
import os
import os.path as osp
import re
from typing import Callable, Optional, TypeVar

import torch
from mmengine.config import Config, DictAction
from mmengine.logging import print_log

from .checkpoints import mmengine_checkpoints_allowed

CODEBASES = ('mmdet', 'mmseg')
T = TypeVar('T')


def documented_parser(doc: str) -> argparse.ArgumentParser:
    """A tool's parser described by its module docstring: the first paragraph as the
    description, the rest, as written, after the options."""
    summary, _, details = doc.partition('\n\n')
    return argparse.ArgumentParser(description=summary, epilog=details,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


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
    """MMEngine's Runner for ``cfg`` (``runner_type`` honoured), after the CPU launcher fixes,
    with the config's ``compile`` key applied to the backbone (:func:`compile_backbone`)."""
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    setup_distributed_on_cpu(cfg)
    compile_cfg = cfg.pop('compile', None)
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    compile_backbone(runner.model, compile_cfg)
    return runner


def compile_backbone(model: torch.nn.Module, compile_cfg) -> None:
    """MMEngine's ``compile`` config key (``True`` or ``torch.compile`` options such as
    ``dict(backend='inductor', dynamic=True)``), applied to the model's backbone in place.

    MMEngine compiles the whole ``train_step``, optimizer step included, which Dynamo fails to
    trace in mmengine 0.10.7 under torch 2.13 (``InternalTorchDynamoError`` in the parameter
    scheduler's wrapper of the optimizer). The backbone is where a Swin detector or segmentor
    spends most of its time and compiles as one graph; compiled in place
    (``nn.Module.compile``), its state-dict keys stay the same, and validation and testing use
    it too."""
    if compile_cfg is None or compile_cfg is False:
        return
    if compile_cfg is not True and not isinstance(compile_cfg, dict):
        raise ValueError(f'compile must be True, False or a dict of torch.compile options, '
                         f'got {compile_cfg!r}')
    from mmengine.model import is_model_wrapper
    module = model.module if is_model_wrapper(model) else model
    backbone = getattr(module, 'backbone', None)
    if backbone is None:
        raise ValueError(f'compile: {type(module).__name__} has no backbone to compile')
    options = {} if compile_cfg is True else dict(compile_cfg)
    backbone.compile(**options)
    print_log(f'compile: the backbone ({type(backbone).__name__}) is compiled with '
              f'torch.compile({", ".join(f"{k}={v!r}" for k, v in options.items())}); '
              f'the first iterations at each new input size take longer', logger='current')


def build_model(cfg: Config, codebase: str):
    """``cfg.model`` built in its codebase's registry (no weights are loaded)."""
    from mmengine.registry import DefaultScope
    registry = importlib.import_module(f'{codebase}.registry').MODELS
    with DefaultScope.overwrite_default_scope(codebase):
        return registry.build(cfg.model)


def run(step: Callable[[], T]) -> T:
    """``runner.train`` / ``runner.test`` with MMEngine's own checkpoints loadable. In a
    distributed run, the process group is torn down when the process exits
    (:func:`tear_down_process_group`): not as soon as the step returns, since the caller
    still holds the runner, and with it the group."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        _tear_down_at_exit()
    with mmengine_checkpoints_allowed():
        return step()


@functools.lru_cache(maxsize=None)
def _tear_down_at_exit() -> None:
    atexit.register(tear_down_process_group)


def tear_down_process_group() -> None:
    """Destroy the process group (if any), then collect the garbage that still holds it, while
    the interpreter is fully alive.

    Destroying a group only unregisters it. The runner's DDP wrapper holds it too, and the
    runner is a reference cycle, freed only by the garbage collector: left to interpreter
    finalization, the group's gloo threads (``pt_gloo_runloop``, ``gloo_tcp_loop``) were seen
    still running there after ``destroy_process_group``, and can abort a finished process
    (SIGABRT, "terminate called without an active exception"; twice in CI's 2-process CPU
    run; pytorch/pytorch#190489). Collected here, the group's destructor joins its threads."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    gc.collect()


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
    codebase = codebase_of(cfg, path)
    check_backbone_channels(cfg, path)
    check_num_classes(cfg, codebase, path)
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
    from .variants import arch_settings, check_out_indices
    settings = arch_settings(backbone.get('arch', 'tiny'))
    out_indices = check_out_indices(backbone.get('out_indices', (0, 1, 2, 3)),
                                    len(settings['depths']))
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


#: Heads whose ``num_classes`` must equal the dataset's class count.
_CLASS_HEADS = re.compile(r'(bbox_head|mask_head|decode_head|auxiliary_head)(\.\d+)?$')


def check_num_classes(cfg: Config, codebase: str, path: str = 'config') -> None:
    """Fail before building when a dataset's classes and the heads' ``num_classes`` differ.

    The most common mistake with a new dataset: MMDetection trains with 80-class heads on a
    3-class dataset, then fails at its first evaluation with an ``IndexError`` inside
    ``CocoMetric``, naming neither number.
    """
    heads = list(_num_classes_keys(cfg.model, 'model'))
    if not heads:
        return
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        found = _dataset_classes(cfg.get(loader), codebase, f'{loader}.dataset')
        if found is None:
            continue
        where, classes = found
        wrong = [(key, value) for key, value in heads if value != len(classes)]
        if wrong:
            listed = ', '.join(f'{key} = {value}' for key, value in wrong)
            fix = ' '.join(f'{key}={len(classes)}' for key, _ in wrong)
            raise ValueError(
                f'{path}: the dataset has {len(classes)} classes ({where}) but {listed}. '
                f'Set every head to the dataset\'s class count, e.g. --cfg-options {fix}')


def _num_classes_keys(node, key):
    if isinstance(node, dict):
        if 'num_classes' in node and _CLASS_HEADS.search(key):
            yield f'{key}.num_classes', node['num_classes']
        for name, value in node.items():
            yield from _num_classes_keys(value, f'{key}.{name}')
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _num_classes_keys(value, f'{key}.{i}')


def _dataset_classes(loader, codebase: str, where: str):
    """``(where the classes are set, classes)`` of a dataloader's dataset (wrappers such as
    RepeatDataset unwrapped): its ``metainfo.classes``, else its dataset type's own classes;
    None when neither is known."""
    if not isinstance(loader, dict) or not isinstance(loader.get('dataset'), dict):
        return None
    dataset = loader['dataset']
    while isinstance(dataset.get('dataset'), dict):
        dataset, where = dataset['dataset'], f'{where}.dataset'
    classes = (dataset.get('metainfo') or {}).get('classes')
    if classes is not None:
        return f'{where}.metainfo.classes', list(classes)
    registry = importlib.import_module(f'{codebase}.registry').DATASETS
    try:
        dataset_type = registry.get(dataset.get('type', ''))
    except Exception:  # noqa: BLE001 - an unknown type is reported when the dataset is built
        dataset_type = None
    classes = getattr(dataset_type, 'METAINFO', {}).get('classes') if dataset_type else None
    if classes is None:
        return None
    return f"{where}: {dataset['type']}'s own classes", list(classes)


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
