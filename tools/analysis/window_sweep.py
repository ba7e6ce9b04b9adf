"""Test-time window adjustment: evaluate one trained detector or segmentor at several attention
windows, without fine-tuning (the SwinV2 paper, section 4.4 / Table 1).

    python tools/analysis/window_sweep.py CONFIG CHECKPOINT --windows 8 12 16 24
                                          [--work-dir DIR] [--cfg-options KEY=VALUE ...]

Each window is a run of tools/test.py's machinery (same config handling, checkpoint allow-list
and metrics) with ``model.backbone.window_size`` replaced. The position bias keeps the windows
it was trained with: at the trained window the model is exactly the trained one; at any other
window each stage is evaluated as pretrained with its trained ``pretrained_window_sizes`` (read
from the checkpoint's ``backbone.pretrained_windows``, else the config), or, where that is 0,
with the window the stage was trained at.

Writes to ``--work-dir`` (default ``work_dirs/<config>_window_sweep``): ``window_sweep.md``
(markdown table), ``window_sweep.json`` (every metric per window) and ``window_sweep.png``
(the main metrics against the window: COCO bbox / segm AP, or mIoU).
"""
import argparse
import importlib.util
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', '..'))

from mmswinv2.checkpoints import (CheckpointError, mmengine_checkpoints_allowed,  # noqa: E402
                                  read_checkpoint)
from mmswinv2.launch import (add_launch_arguments, add_repo_to_path, build_runner,  # noqa: E402
                             documented_parser, load_config, parse_launch_args, run)
from mmswinv2.variants import arch_settings  # noqa: E402

#: The metrics plotted and tabulated first, by codebase (all of them go to the JSON).
MAIN_METRICS = dict(mmdet=('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP'),
                    mmseg=('mIoU', 'mAcc', 'aAcc'))


def _test_tool():
    """tools/test.py as a module (its name would clash with Python's own ``test`` package)."""
    spec = importlib.util.spec_from_file_location(
        'mmswinv2_test_tool', os.path.join(os.path.dirname(__file__), '..', 'test.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_args(argv=None):
    parser = documented_parser(__doc__)
    parser.add_argument('config', help='the config the checkpoint was trained with')
    parser.add_argument('checkpoint', help='trained detector / segmentor checkpoint')
    parser.add_argument('--windows', type=int, nargs='+', required=True,
                        help='test windows (one per run, used by every stage)')
    parser.add_argument('--work-dir', help='where logs, the table and the plot go')
    add_launch_arguments(parser, example='test_dataloader.batch_size=2')
    args = parse_launch_args(parser, argv)
    bad = [w for w in args.windows if w < 1]
    if bad:
        parser.error(f'--windows: windows must be positive integers, got {bad}')
    return args


def trained_windows(cfg, checkpoint: str):
    """``(window sizes, pretrained window sizes)`` per stage, as the checkpoint was trained."""
    backbone = cfg.model.backbone
    stages = len(arch_settings(backbone.get('arch', 'tiny'))['depths'])
    window = backbone.get('window_size', 8)
    windows = [window] * stages if isinstance(window, int) else list(window)
    state_dict = read_checkpoint(checkpoint).state_dict
    recorded = state_dict.get('backbone.pretrained_windows')
    if recorded is not None:
        pretrained = [int(v) for v in recorded.tolist()]
    else:
        configured = backbone.get('pretrained_window_sizes') or 0
        pretrained = [configured] * stages if isinstance(configured, int) else list(configured)
    return windows, pretrained


def sweep_pretrained_windows(window: int, windows, pretrained):
    """The pretrained windows to evaluate at ``window``: the trained ones at the trained
    window; elsewhere each stage's trained pretrained window, or its trained window if 0."""
    if all(w == window for w in windows):
        return list(pretrained)
    return [p or w for w, p in zip(windows, pretrained)]


def evaluate_at(test_tool, args, window: int, windows, pretrained):
    """``(codebase, metrics)`` of the checkpoint tested at ``window``."""
    test_args = argparse.Namespace(
        config=args.config, checkpoint=args.checkpoint, cfg_options=args.cfg_options,
        work_dir=os.path.join(args.work_dir, f'window_{window}'), launcher=args.launcher,
        out=None, show=False, show_dir=None, wait_time=0, tta=False)
    cfg, codebase = test_tool.configure(test_args)
    # The trained weights are loaded here, so that the buffer they carry can be overridden.
    cfg.load_from = None
    cfg.model.backbone.window_size = window
    runner = build_runner(cfg)
    with mmengine_checkpoints_allowed():
        runner.load_checkpoint(args.checkpoint, map_location='cpu')
    model = getattr(runner.model, 'module', runner.model)  # unwrapped from DDP
    model.backbone.set_pretrained_window_sizes(
        sweep_pretrained_windows(window, windows, pretrained))
    metrics = run(runner.test)
    if codebase == 'mmdet':
        metrics = test_tool.report_empty_detections(cfg, metrics)
    return codebase, {k: float(v) for k, v in metrics.items() if _is_scalar(v)}


def _is_scalar(value) -> bool:
    """A number the metrics hold: Python's or numpy's (mmseg returns ``numpy.float32``)."""
    import numbers

    import numpy as np
    return isinstance(value, (numbers.Real, np.generic)) and np.ndim(value) == 0


def write_report(results: dict, codebase: str, trained, work_dir: str) -> list:
    windows = sorted(results)
    names = [m for m in MAIN_METRICS[codebase] if any(m in results[w] for w in windows)]
    names += sorted({m for w in windows for m in results[w]} - set(names))
    lines = [f'Test-time windows (trained windows {trained[0]}, pretrained {trained[1]})', '',
             '| window | ' + ' | '.join(names) + ' |', '|---' * (len(names) + 1) + '|']
    for w in windows:
        lines.append(f'| {w} | ' + ' | '.join(
            f'{results[w][m]:.4f}' if m in results[w] else '' for m in names) + ' |')
    paths = [os.path.join(work_dir, f'window_sweep.{ext}') for ext in ('md', 'json', 'png')]
    with open(paths[0], 'w') as f:
        f.write('\n'.join(lines) + '\n')
    with open(paths[1], 'w') as f:
        json.dump(dict(trained_window_sizes=trained[0], trained_pretrained_window_sizes=trained[1],
                       results={str(w): results[w] for w in windows}), f, indent=2)

    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name in [m for m in MAIN_METRICS[codebase] if m in names][:2] or names[:1]:
        ax.plot(windows, [results[w].get(name, float('nan')) for w in windows], 'o-', label=name)
    for w in set(trained[0]):
        ax.axvline(w, color='grey', linestyle=':', linewidth=1)
    ax.set_xlabel('test window (dotted: trained window)')
    ax.set_xticks(windows)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(paths[2], dpi=110)
    plt.close(fig)
    print('\n'.join(lines))
    return paths


def main(argv=None):
    args = parse_args(argv)
    add_repo_to_path()
    test_tool = _test_tool()
    if args.work_dir is None:
        name = os.path.splitext(os.path.basename(args.config))[0]
        args.work_dir = os.path.join('work_dirs', f'{name}_window_sweep')
    if not os.path.exists(args.checkpoint):
        print(f'error: checkpoint not found: {args.checkpoint}', file=sys.stderr)
        return 1
    try:
        cfg = load_config(args.config, args.cfg_options, args.work_dir, args.launcher)
        if 'SwinTransformerV2' not in str(cfg.model.backbone.get('type')):
            raise ValueError(f'{args.config}: the backbone is {cfg.model.backbone.get("type")}, '
                             f'not mmswinv2.SwinTransformerV2')
        windows, pretrained = trained_windows(cfg, args.checkpoint)
    except (CheckpointError, ValueError, FileNotFoundError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    os.makedirs(args.work_dir, exist_ok=True)
    results = {}
    codebase = None
    for window in args.windows:
        codebase, results[window] = evaluate_at(test_tool, args, window, windows, pretrained)
    paths = write_report(results, codebase, (windows, pretrained), args.work_dir)
    print('wrote ' + ', '.join(paths))
    return 0


if __name__ == '__main__':
    sys.exit(main())
