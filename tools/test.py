"""Evaluate a checkpoint with a detection (MMDetection) or segmentation (MMSegmentation) config.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out FILE_OR_DIR] [--show]
                                           [--show-dir DIR] [--wait-time S] [--tta]
                                           [--cfg-options KEY=VALUE ...] [--launcher ...]
    bash tools/dist_test.sh CONFIG CHECKPOINT GPUS [same options]

Prints the config's metrics: bbox / segm AP (COCO, pycocotools) for detection, mIoU for
segmentation. ``--out``: detection results as a ``.pkl`` (MMDetection), or a folder of predicted
label maps (MMSegmentation). ``--show-dir``: pictures of the predictions. ``--tta``: the config's
test-time augmentation (detection falls back to horizontal-flip TTA, as MMDetection does).
CHECKPOINT is read with ``weights_only=True`` and mmswinv2's allow-list of MMEngine's log objects.
"""
import argparse
import copy
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))

from mmengine.config import ConfigDict  # noqa: E402
from mmengine.logging import print_log  # noqa: E402

from mmswinv2.launch import (add_launch_arguments, add_repo_to_path, build_runner,  # noqa: E402
                             codebase_of, load_config, parse_launch_args, run)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (and evaluate) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save logs and metrics')
    parser.add_argument('--out', help='detection: dump results to this .pkl; segmentation: '
                                      'save predicted label maps to this folder')
    parser.add_argument('--show', action='store_true', help='show prediction results')
    parser.add_argument('--show-dir', help='save pictures of the predictions here (inside the '
                                           'work dir\'s timestamped folder for detection)')
    parser.add_argument('--wait-time', type=float, default=2, help='--show interval (s)')
    parser.add_argument('--tta', action='store_true', help='test-time augmentation')
    add_launch_arguments(parser, example='test_dataloader.batch_size=2')
    return parse_launch_args(parser, argv)


def configure(args):
    if not os.path.exists(args.checkpoint):
        raise FileNotFoundError(f'checkpoint not found: {args.checkpoint}')
    cfg = load_config(args.config, args.cfg_options, args.work_dir, args.launcher)
    codebase = codebase_of(cfg, args.config)
    cfg.load_from = args.checkpoint
    if args.show or args.show_dir:
        _enable_visualization(cfg, args, codebase)
    if args.tta:
        _enable_tta(cfg, codebase, args.config)
    if args.out is not None and codebase == 'mmseg':
        cfg.test_evaluator['output_dir'] = args.out
        cfg.test_evaluator['keep_results'] = True
    if args.out is not None and codebase == 'mmdet' and not args.out.endswith(('.pkl',
                                                                               '.pickle')):
        raise ValueError(f'--out {args.out}: detection results are dumped to a .pkl file')
    return cfg, codebase


def _enable_visualization(cfg, args, codebase):
    hook = cfg.default_hooks.get('visualization')
    if hook is None:
        raise ValueError(f"{args.config}: --show/--show-dir need default_hooks.visualization "
                         f"(e.g. dict(type='DetVisualizationHook'))")
    hook['draw'] = True
    if args.show:
        hook['show'] = True
        hook['wait_time'] = args.wait_time
    if args.show_dir:
        if codebase == 'mmdet':
            hook['test_out_dir'] = args.show_dir
        else:
            cfg.visualizer['save_dir'] = args.show_dir


def _enable_tta(cfg, codebase, path):
    if codebase == 'mmdet':
        if 'tta_model' not in cfg:
            print_log('no tta_model in the config: using DetTTAModel (NMS 0.5, 100 per image)',
                      logger='current')
            cfg.tta_model = dict(type='DetTTAModel', tta_cfg=dict(
                nms=dict(type='nms', iou_threshold=0.5), max_per_img=100))
        if 'tta_pipeline' not in cfg:
            print_log('no tta_pipeline in the config: using horizontal-flip TTA',
                      logger='current')
            dataset = cfg.test_dataloader.dataset
            while 'dataset' in dataset:
                dataset = dataset['dataset']
            cfg.tta_pipeline = copy.deepcopy(dataset.pipeline)
            cfg.tta_pipeline[-1] = dict(type='TestTimeAug', transforms=[
                [dict(type='RandomFlip', prob=1.), dict(type='RandomFlip', prob=0.)],
                [dict(type='PackDetInputs', meta_keys=(
                    'img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor', 'flip',
                    'flip_direction'))]])
    elif 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
        raise ValueError(f'{path}: --tta needs tta_model and tta_pipeline in the config')
    cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline


def main(argv=None):
    args = parse_args(argv)
    add_repo_to_path()
    cfg, codebase = configure(args)
    runner = build_runner(cfg)
    if args.out is not None and codebase == 'mmdet':
        from mmdet.evaluation import DumpDetResults
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))
    return run(runner.test)


if __name__ == '__main__':
    main()
