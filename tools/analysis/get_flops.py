"""Parameters and multiply-accumulates (MACs) of a detection / segmentation config.

    python tools/analysis/get_flops.py CONFIG [--shape H [W]] [--backbone-only]
                                              [--num-classes N] [--cfg-options KEY=VALUE ...]

Counts with MMEngine's ``mmengine.analysis`` (fvcore's counters, as MMDetection's and
MMSegmentation's own get_flops tools), on one ``1 x 3 x H x W`` input of random values:

- the whole model (default): detector in tensor mode (backbone, neck, RPN proposals, RoI heads on
  them; MMDetection's default input 800 x 1280) or segmentor (backbone and decode heads;
  MMSegmentation's 512 x 2048);
- ``--backbone-only``: ``model.backbone`` alone; with ``--num-classes N`` a global-average-pool
  + linear ``N``-class head is added and the backbone returns its last stage only, which is the
  ImageNet classifier that model cards count (SwinV2-T/W8 at 256: 28.35 M, 5.96 GMACs).

The unit is the **MAC** (one multiply-accumulate), what fvcore, MMEngine and timm's model cards
count and call "FLOPs"; 1 MAC = 2 floating-point operations. Counted: convolutions, linear
layers, matrix products (the attention's q·k and attention·v included), norms, upsampling,
pooling. Not counted: element-wise work (softmax, GELU, adds, q/k normalisation, masks), NMS
and RoI pooling.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', '..'))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from mmengine.config import DictAction  # noqa: E402

from mmswinv2.launch import build_model, codebase_of, load_config  # noqa: E402

DEFAULT_SHAPES = dict(mmdet=(800, 1280), mmseg=(512, 2048))
UNIT = ('MACs (multiply-accumulates: what fvcore / MMEngine / timm count as "FLOPs"; '
        '1 MAC = 2 FLOPs)')


class LinearClassifier(nn.Module):
    """``backbone`` -> global average pool of its last output -> ``Linear(C, num_classes)``."""

    def __init__(self, backbone: nn.Module, channels: int, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x)[-1].mean((2, 3)))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Parameters and MACs of a config')
    parser.add_argument('config', help='config file path')
    parser.add_argument('--shape', type=int, nargs='+', metavar=('H', 'W'),
                        help='input height [and width] (default: 800 1280 for detection, '
                             '512 2048 for segmentation, or as --shape H for a square)')
    parser.add_argument('--backbone-only', action='store_true',
                        help='count model.backbone alone')
    parser.add_argument('--num-classes', type=int,
                        help='with --backbone-only: add a pooled linear classifier head')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, e.g. model.backbone.window_size=16')
    args = parser.parse_args(argv)
    if args.shape is not None and (len(args.shape) > 2 or min(args.shape) < 1):
        parser.error(f'--shape takes H or H W, positive integers; got {args.shape}')
    if args.num_classes is not None:
        if not args.backbone_only:
            parser.error('--num-classes needs --backbone-only')
        if args.num_classes < 1:
            parser.error(f'--num-classes must be positive, got {args.num_classes}')
    return args


def input_shape(args, codebase):
    if args.shape is None:
        return DEFAULT_SHAPES[codebase]
    return (args.shape[0], args.shape[-1])


def model_to_count(cfg, codebase, shape, backbone_only, num_classes):
    """The module to trace and its input, with ``forward`` taking that one tensor."""
    if backbone_only and num_classes:
        out_indices = cfg.model.backbone.get('out_indices', (0, 1, 2, 3))
        cfg.model.backbone['out_indices'] = (max(out_indices),)
    model = build_model(cfg, codebase).eval()
    x = torch.randn(1, 3, *shape)
    if backbone_only:
        backbone = model.backbone
        if num_classes:
            with torch.no_grad():
                channels = backbone(x)[-1].shape[1]
            return LinearClassifier(backbone, channels, num_classes).eval(), x
        return backbone, x
    meta = dict(img_shape=shape, ori_shape=shape, pad_shape=shape, batch_input_shape=shape,
                scale_factor=(1.0, 1.0))
    if codebase == 'mmdet':
        from mmdet.structures import DetDataSample
        samples = [DetDataSample(metainfo=meta)]
    else:
        from mmseg.structures import SegDataSample
        samples = [SegDataSample(metainfo=meta)]
    tensor_mode = model._forward  # (inputs, data samples) -> raw head outputs
    model.forward = lambda inputs: tensor_mode(inputs, samples)
    return model, x


def count(model, x):
    """(parameters per module name, MACs per module name, MACs per operator); '' = total."""
    from mmengine.analysis import FlopAnalyzer, parameter_count
    analyzer = FlopAnalyzer(model, (x,))
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    with torch.no_grad():
        macs = analyzer.by_module()
    return parameter_count(model), macs, analyzer.by_operator()


def table_rows(model, params, macs):
    """(name, parameters, MACs) for the backbone's parts (stem, each stage, output norms), the
    backbone, and each other top-level part of the model; the total last."""
    backbone = 'backbone' if hasattr(model, 'backbone') else ''
    prefix = f'{backbone}.' if backbone else ''
    rows = []
    body = model.backbone if backbone else model
    stem = [n for n in ('patch_embed', 'absolute_pos_embed')
            if hasattr(body, n)]
    for name in stem:
        rows.append((prefix + name, params.get(prefix + name, 0), macs.get(prefix + name, 0)))
    for i in range(len(getattr(body, 'stages', []))):
        name = f'{prefix}stages.{i}'
        rows.append((name, params.get(name, 0), macs.get(name, 0)))
    norms = [f'{prefix}{n}' for n, _ in body.named_children() if n.startswith('norm')]
    if norms:
        rows.append((f'{prefix}norm*', sum(params.get(n, 0) for n in norms),
                     sum(macs.get(n, 0) for n in norms)))
    if backbone:
        rows.append(('backbone', params.get('backbone', 0), macs.get('backbone', 0)))
        for name, _ in model.named_children():
            if name != 'backbone' and (params.get(name, 0) or macs.get(name, 0)):
                rows.append((name, params.get(name, 0), macs.get(name, 0)))
    rows.append(('total', params[''], macs['']))
    return rows


def report(config, model, shape, params, macs, by_operator):
    lines = [f'{config}: input 1x3x{shape[0]}x{shape[1]}', f'unit: {UNIT}', '',
             '| module | parameters (M) | GMACs |', '|---|---:|---:|']
    for name, p, m in table_rows(model, params, macs):
        lines.append(f'| {name} | {p / 1e6:.3f} | {m / 1e9:.3f} |')
    lines.append('')
    lines.append('by operator (GMACs): ' + ', '.join(
        f'{op} {m / 1e9:.3f}' for op, m in sorted(by_operator.items(), key=lambda kv: -kv[1])))
    return '\n'.join(lines)


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args.config, args.cfg_options, work_dir=None, launcher='none')
    codebase = codebase_of(cfg, args.config)
    shape = input_shape(args, codebase)
    model, x = model_to_count(cfg, codebase, shape, args.backbone_only, args.num_classes)
    params, macs, by_operator = count(model, x)
    print(report(args.config, model, shape, params, macs, by_operator))
    return dict(params=params, macs=macs, by_operator=by_operator)


if __name__ == '__main__':
    main()
