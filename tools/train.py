"""Train a detector (MMDetection config) or a segmentor (MMSegmentation config).

    python tools/train.py CONFIG [--work-dir DIR] [--amp] [--auto-scale-lr]
                                 [--resume [CKPT]] [--cfg-options KEY=VALUE ...]
                                 [--launcher none|pytorch|slurm|mpi]
    bash tools/dist_train.sh CONFIG GPUS [same options]

The flags are MMDetection's. Checkpoints written by MMEngine (``--resume``, ``load_from``) are
read with ``torch.load(weights_only=True)`` and mmswinv2's allow-list of MMEngine's own log
objects, which torch >= 2.6 otherwise refuses. ``--resume`` without CKPT continues from the
checkpoint ``last_checkpoint`` names if it is whole, else from the newest whole checkpoint of
the work dir, saying so (a run killed while writing leaves no half-written resume point).
A non-finite loss stops the run with the iteration, the loss terms and the learning rate
(``mmswinv2.NonFiniteLossHook`` in our configs).
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))

from mmengine.logging import print_log  # noqa: E402

from mmswinv2.engine import (NonFiniteLossError, checkpoint_problem,  # noqa: E402
                             find_resume_checkpoint)
from mmswinv2.launch import (add_launch_arguments, add_repo_to_path, build_runner,  # noqa: E402
                             load_config, parse_launch_args, run)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a detector or a segmentor')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument('--amp', action='store_true', default=False,
                        help='enable automatic-mixed-precision training')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the learning rate with the total batch size')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from CKPT, or without CKPT from the latest checkpoint '
                             'in the work dir')
    add_launch_arguments(parser, example='train_cfg.max_iters=100')
    return parse_launch_args(parser, argv)


def configure(args):
    cfg = load_config(args.config, args.cfg_options, args.work_dir, args.launcher)
    if args.amp:
        wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
        if wrapper == 'AmpOptimWrapper':
            print_log('AMP training is already enabled in your config.', logger='current')
        elif not torch.cuda.is_available():
            raise ValueError('--amp: MMEngine\'s AmpOptimWrapper (dynamic loss scale) trains '
                             'on a GPU only, and none is available; train without --amp')
        elif wrapper != 'OptimWrapper':
            raise ValueError(f'--amp needs optim_wrapper.type OptimWrapper, the config has '
                             f'{wrapper}')
        else:
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.loss_scale = 'dynamic'
    if args.auto_scale_lr:
        scale = cfg.get('auto_scale_lr')
        if not scale or 'base_batch_size' not in scale:
            raise ValueError(f'{args.config}: --auto-scale-lr needs auto_scale_lr = '
                             f'dict(enable=False, base_batch_size=N) in the config')
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':
        found = find_resume_checkpoint(cfg.work_dir)
        cfg.resume = found is not None
        cfg.load_from = found
    elif args.resume is not None:
        problem = checkpoint_problem(args.resume)
        if problem is not None:
            raise FileNotFoundError(f'--resume {args.resume}: the file {problem}')
        cfg.resume = True
        cfg.load_from = args.resume
    return cfg


def main(argv=None):
    args = parse_args(argv)
    add_repo_to_path()
    cfg = configure(args)
    runner = build_runner(cfg)
    try:
        run(runner.train)
    except NonFiniteLossError as error:
        raise SystemExit(f'error: {error}') from None


if __name__ == '__main__':
    main()
