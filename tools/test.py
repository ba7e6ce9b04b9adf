"""Evaluate a checkpoint with a detection (MMDetection) or segmentation (MMSegmentation) config.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out FILE_OR_DIR] [--show]
                                           [--show-dir DIR] [--wait-time S] [--tta]
                                           [--cfg-options KEY=VALUE ...] [--launcher ...]
    bash tools/dist_test.sh CONFIG CHECKPOINT GPUS [same options]

Prints the config's metrics: bbox / segm AP (COCO, pycocotools) for detection, mIoU for
segmentation. A detector that keeps no detection at all gets the COCO tables with zeros and the
score threshold it fell below (MMDetection alone prints no metrics then). ``--out``: detection
results as a ``.pkl`` (MMDetection), or a folder of predicted label maps (MMSegmentation).
``--show-dir``: pictures of the predictions. ``--tta``: the config's test-time augmentation
(detection falls back to horizontal-flip TTA, as MMDetection does).
CHECKPOINT is read with ``weights_only=True`` and mmswinv2's allow-list of MMEngine's log objects.
"""
import argparse
import copy
import logging
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


#: pycocotools' summary lines (COCOeval.summarize) for bbox and segm.
COCO_SUMMARY = [
    ('Precision', '(AP)', '0.50:0.95', 'all', 100), ('Precision', '(AP)', '0.50', 'all', 100),
    ('Precision', '(AP)', '0.75', 'all', 100), ('Precision', '(AP)', '0.50:0.95', 'small', 100),
    ('Precision', '(AP)', '0.50:0.95', 'medium', 100),
    ('Precision', '(AP)', '0.50:0.95', 'large', 100), ('Recall', '(AR)', '0.50:0.95', 'all', 1),
    ('Recall', '(AR)', '0.50:0.95', 'all', 10), ('Recall', '(AR)', '0.50:0.95', 'all', 100),
    ('Recall', '(AR)', '0.50:0.95', 'small', 100), ('Recall', '(AR)', '0.50:0.95', 'medium', 100),
    ('Recall', '(AR)', '0.50:0.95', 'large', 100)]
#: The keys CocoMetric returns per metric type, after its prefix.
COCO_KEYS = ('mAP', 'mAP_50', 'mAP_75', 'mAP_s', 'mAP_m', 'mAP_l')


def score_threshold(cfg):
    """``(config key, value)`` of the detector's test score threshold, or None."""
    model = cfg.model
    while 'module' in model:  # TTA wrapper
        model = model.module
    test_cfg = model.get('test_cfg') or {}
    if isinstance(test_cfg.get('rcnn'), dict) and 'score_thr' in test_cfg.rcnn:
        return 'model.test_cfg.rcnn.score_thr', test_cfg.rcnn.score_thr
    if 'score_thr' in test_cfg:
        return 'model.test_cfg.score_thr', test_cfg.score_thr
    return None


def coco_metrics_without_results(cfg, metrics: dict):
    """``[(prefix, iou type)]`` of the COCO metrics that returned nothing: MMDetection's
    CocoMetric logs "The testing results of the whole dataset is empty" and returns no
    numbers when the model kept no detection at all."""
    evaluators = cfg.test_evaluator
    missing = []
    for evaluator in evaluators if isinstance(evaluators, (list, tuple)) else [evaluators]:
        if not str(evaluator.get('type', '')).endswith('CocoMetric'):
            continue
        prefix = evaluator.get('prefix') or 'coco'
        types = evaluator.get('metric', 'bbox')
        for iou_type in [types] if isinstance(types, str) else types:
            if iou_type in ('bbox', 'segm') and f'{prefix}/{iou_type}_mAP' not in metrics:
                missing.append((prefix, iou_type))
    return missing


def report_empty_detections(cfg, metrics: dict) -> dict:
    """When the detector kept no detection, print the COCO tables with zeros and the
    threshold to look at, and return the metrics with those zeros filled in."""
    missing = coco_metrics_without_results(cfg, metrics)
    if not missing:
        return metrics
    metrics = dict(metrics)
    for prefix, iou_type in missing:
        lines = [f'Evaluate annotation type *{iou_type}*: no predictions, every value is 0']
        for kind, short, iou, area, dets in COCO_SUMMARY:
            lines.append(f' {"Average " + kind:<18} {short} @[ IoU={iou:<9} | area={area:>6s} '
                         f'| maxDets={dets:>3d} ] = 0.000')  # COCOeval.summarize's format
        print_log('\n'.join(lines), logger='current')
        metrics.update({f'{prefix}/{iou_type}_{key}': 0.0 for key in COCO_KEYS})
    threshold = score_threshold(cfg)
    where = (f'{threshold[0]} = {threshold[1]}' if threshold else
             "the detector's test score threshold")
    print_log(f'The detector kept no detection on the whole test set: every score was below '
              f'{where}. An undertrained model scores low: try --cfg-options '
              f'{threshold[0] if threshold else "model.test_cfg...score_thr"}=0.0 to see what '
              f'it predicts.', logger='current', level=logging.WARNING)
    print_log('  '.join(f'{key}: {value:.4f}' for key, value in metrics.items()
                        if isinstance(value, float)), logger='current')
    return metrics


def main(argv=None):
    args = parse_args(argv)
    add_repo_to_path()
    cfg, codebase = configure(args)
    runner = build_runner(cfg)
    if args.out is not None and codebase == 'mmdet':
        from mmdet.evaluation import DumpDetResults
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))
    metrics = run(runner.test)
    if codebase == 'mmdet':
        metrics = report_empty_detections(cfg, metrics)
    return metrics


if __name__ == '__main__':
    main()
