"""What tools/train.py and tools/test.py share: loading a config the OpenMMLab way and the few
environment fixes this stack needs. Detection and segmentation are told apart by the config's
``default_scope`` (``mmdet`` / ``mmseg``), which their base runtime configs set."""
import os
import os.path as osp
from typing import Optional

import torch
from mmengine.config import Config
from mmengine.logging import print_log

CODEBASES = ('mmdet', 'mmseg')


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
    return cfg


def codebase_of(cfg: Config, path: str = 'config') -> str:
    scope = cfg.get('default_scope')
    if scope not in CODEBASES:
        raise ValueError(f'{path}: default_scope is {scope!r}; these tools run MMDetection '
                         f'(mmdet) and MMSegmentation (mmseg) configs, whose base runtime '
                         f'configs set it')
    return scope


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


