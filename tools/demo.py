"""The whole demo in one command: data -> training -> AP and mIoU -> pictures and curves.

    python tools/demo.py [--out-dir outputs/demo] [--data-root data/demo] [--seed 0] [--smoke]

1. generates the embedded shapes dataset (tools/make_demo_data.py),
2. for detection (configs/det/demo_mask_rcnn_swinv2_shapes.py) and segmentation
   (configs/seg/demo_upernet_swinv2_shapes.py): evaluates the untrained model, trains with
   tools/train.py seeded with ``--seed`` (``randomness.seed``: the same figures on the same
   machine and software), evaluates the result with tools/test.py drawing its predictions,
3. writes to OUT_DIR: metrics.json (bbox / segm AP, mIoU, untrained vs trained),
   pictures/*.png (predicted boxes and masks over validation images, drawn by the
   MMDetection / MMSegmentation visualisers), curves.png (training loss and validation
   metrics), logs/*.log (every tool's output).

``--smoke`` runs the same steps on a few images for a few iterations, to check the pipeline
(the tests use it); its numbers mean nothing.
"""
import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time
import warnings

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
sys.path.insert(0, ROOT)

TASKS = {
    'detection': dict(
        config='configs/det/demo_mask_rcnn_swinv2_shapes.py', scope='mmdet',
        metrics={'coco/bbox_mAP_50': 'bbox AP50', 'coco/bbox_mAP': 'bbox AP',
                 'coco/segm_mAP_50': 'segm AP50', 'coco/segm_mAP': 'segm AP'}),
    'segmentation': dict(
        config='configs/seg/demo_upernet_swinv2_shapes.py', scope='mmseg',
        metrics={'mIoU': 'mIoU (%)', 'mAcc': 'mAcc (%)', 'aAcc': 'aAcc (%)'}),
}
PICTURES_PER_TASK = 6
#: --smoke: a few images, a few iterations (config overrides).
SMOKE = {
    'detection': ['train_dataloader.dataset.indices=4', 'val_dataloader.dataset.indices=2',
                  'test_dataloader.dataset.indices=2', 'train_cfg.max_epochs=1',
                  'train_cfg.val_interval=1', 'default_hooks.logger.interval=1',
                  'default_hooks.checkpoint.interval=1'],
    'segmentation': ['val_dataloader.dataset.indices=2', 'test_dataloader.dataset.indices=2',
                     'train_cfg.max_iters=4', 'train_cfg.val_interval=2',
                     'default_hooks.logger.interval=1', 'default_hooks.checkpoint.interval=4'],
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out-dir', default='outputs/demo')
    parser.add_argument('--data-root', default='data/demo')
    parser.add_argument('--seed', type=int, default=0,
                        help='the random seed of the models and the training runs')
    parser.add_argument('--smoke', action='store_true',
                        help='a few images and iterations, to check the pipeline')
    args = parser.parse_args(argv)
    out = os.path.abspath(args.out_dir)
    if os.path.exists(out):
        shutil.rmtree(out)
    for sub in ('logs', 'pictures', 'work'):
        os.makedirs(os.path.join(out, sub))
    start = time.time()

    step('generating the demo dataset', start)
    sizes = ['--train', '8', '--val', '4'] if args.smoke else []
    run([os.path.join('tools', 'make_demo_data.py'), '--out', args.data_root, *sizes],
        os.path.join(out, 'logs', 'make_demo_data.log'))

    metrics = {}
    for task, spec in TASKS.items():
        work = os.path.join(out, 'work', task)
        options = [] if args.data_root == 'data/demo' else _data_root_options(task,
                                                                              args.data_root)
        if args.smoke:
            options = options + SMOKE[task]
        step(f'{task}: evaluating the untrained model', start)
        untrained = save_untrained_checkpoint(spec, os.path.join(work, 'untrained.pth'),
                                              args.seed)
        before = evaluate(spec, untrained, os.path.join(work, 'test_untrained'), options,
                          os.path.join(out, 'logs', f'{task}_test_untrained.log'))
        step(f'{task}: training ({spec["config"]})', start)
        run(['tools/train.py', spec['config'], '--work-dir', work,
             *_cfg(options + [f'randomness.seed={args.seed}'])],
            os.path.join(out, 'logs', f'{task}_train.log'))
        step(f'{task}: evaluating the trained model and drawing its predictions', start)
        after = evaluate(spec, last_checkpoint(work), os.path.join(work, 'test'), options,
                         os.path.join(out, 'logs', f'{task}_test.log'), draw=True)
        metrics[task] = dict(untrained=before, trained=after,
                             config=spec['config'], seed=args.seed)
        collect_pictures(task, os.path.join(work, 'test'), os.path.join(out, 'pictures'))

    with open(os.path.join(out, 'metrics.json'), 'w') as f:
        json.dump(metrics, f, indent=2)
    step('plotting curves', start)
    plot_curves(os.path.join(out, 'work'), os.path.join(out, 'curves.png'), metrics)
    report(metrics, out, time.time() - start)


def step(message, start):
    print(f'[{time.time() - start:6.0f} s] {message}', flush=True)


def run(args, log_path):
    """Run a tool with this interpreter from the repository root; its output goes to a log."""
    env = {**os.environ, 'PYTHONPATH': ROOT + os.pathsep + os.environ.get('PYTHONPATH', '')}
    with open(log_path, 'w') as log:
        result = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    if result.returncode != 0:
        with open(log_path) as log:
            tail = log.read()[-3000:]
        raise SystemExit(f'demo step failed: {" ".join(args)}\n(see {log_path})\n{tail}')


def save_untrained_checkpoint(spec, path, seed):
    """The model as training starts (initialised, not trained), saved for tools/test.py.

    Built in this process with its warnings silenced: the same build in tools/train.py logs
    them to the task's log.
    """
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        import torch
        from mmengine.config import Config
        from mmengine.logging import MMLogger
        from mmengine.registry import DefaultScope
        # init_weights reports every parameter to the current MMLogger: keep the output short
        MMLogger.get_instance(f'mmswinv2_demo_{spec["scope"]}', log_level='WARNING')
        cfg = Config.fromfile(os.path.join(ROOT, spec['config']))
        registry = __import__(f'{spec["scope"]}.registry', fromlist=['MODELS']).MODELS
        with DefaultScope.overwrite_default_scope(spec['scope']):
            torch.manual_seed(seed)
            model = registry.build(cfg.model)
            model.init_weights()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, path)
    return path


def last_checkpoint(work_dir):
    """The checkpoint MMEngine saved at the end of training (it names it in `last_checkpoint`)."""
    with open(os.path.join(work_dir, 'last_checkpoint')) as f:
        return f.read().strip()


def evaluate(spec, checkpoint, work, options, log_path, draw=False):
    args = ['tools/test.py', spec['config'], checkpoint, '--work-dir', work, *_cfg(options)]
    if draw and spec['scope'] == 'mmseg':
        # mmseg's hook draws every `interval`-th test image (50 by default): draw them all
        args += ['--show-dir', os.path.join(work, 'pictures'),
                 '--cfg-options', 'default_hooks.visualization.interval=1', *options]
    elif draw:
        args += ['--show-dir', 'pictures']
    run(args, log_path)
    [result] = sorted(glob.glob(os.path.join(work, '*', '*.json')))[-1:]
    with open(result) as f:
        values = json.loads(f.read().splitlines()[-1])
    return {label: values.get(key) for key, label in spec['metrics'].items()}


def collect_pictures(task, test_work, pictures):
    import cv2
    found = sorted(glob.glob(os.path.join(test_work, '**', 'pictures', '**', '*.*'),
                             recursive=True))
    found = [p for p in found if p.lower().endswith(('.png', '.jpg'))][:PICTURES_PER_TASK]
    for i, path in enumerate(found):
        cv2.imwrite(os.path.join(pictures, f'{task}_{i}.png'), cv2.imread(path))


def plot_curves(work_root, path, metrics):
    """Training loss per iteration; validation metrics from the untrained model (at 0) to the
    end of training."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    for row, (task, spec) in enumerate(TASKS.items()):
        [scalars] = glob.glob(os.path.join(work_root, task, '*', 'vis_data', 'scalars.json'))
        with open(scalars) as f:
            records = [json.loads(line) for line in f if line.strip()]
        train = [r for r in records if 'loss' in r]
        axes[row, 0].plot([r['step'] for r in train], [r['loss'] for r in train])
        axes[row, 0].set(title=f'{task}: training loss', xlabel='iteration', ylabel='loss')
        for key, label in spec['metrics'].items():
            points = [(r['step'], r[key]) for r in records if key in r]
            if points and metrics[task]['untrained'][label] is not None:
                points = [(0, metrics[task]['untrained'][label])] + points
            if points:
                axes[row, 1].plot(*zip(*points), marker='o', label=label)
        axes[row, 1].set(title=f'{task}: validation', xlabel='epoch' if task == 'detection'
                         else 'iteration')
        axes[row, 1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def report(metrics, out, seconds):
    seed = next(iter(metrics.values()))['seed']
    print(f'\nDemo finished in {seconds / 60:.1f} min (seed {seed}). Validation split:')
    for task, values in metrics.items():
        for label in values['trained']:
            print(f'  {task:<12} {label:<11} untrained {_fmt(values["untrained"][label]):>6}'
                  f'   trained {_fmt(values["trained"][label]):>6}')
    print(f'\nmetrics:  {os.path.join(out, "metrics.json")}')
    print(f'pictures: {os.path.join(out, "pictures")}')
    print(f'curves:   {os.path.join(out, "curves.png")}')
    print(f'logs:     {os.path.join(out, "logs")}')


def _fmt(value):
    return 'n/a' if value is None else f'{value:.3f}'


def _data_root_options(task, data_root):
    if task == 'detection':
        root = os.path.join(os.path.abspath(data_root), 'coco') + '/'
        return [f'train_dataloader.dataset.data_root={root}',
                f'val_dataloader.dataset.data_root={root}',
                f'test_dataloader.dataset.data_root={root}',
                f'val_evaluator.ann_file={root}annotations/instances_val.json',
                f'test_evaluator.ann_file={root}annotations/instances_val.json']
    root = os.path.join(os.path.abspath(data_root), 'ade')
    return [f'{split}_dataloader.dataset.data_root={root}' for split in ('train', 'val', 'test')]


def _cfg(options):
    return ['--cfg-options', *options] if options else []


if __name__ == '__main__':
    main()
