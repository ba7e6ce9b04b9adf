"""Per-stage error of mmswinv2's SwinV2 backbone in each precision and attention path, against HF
transformers' Swinv2 in float64 on the same weights.

    python tools/analysis/precision.py [--device cpu|cuda] [--arch tiny] [--batch 2]
                                       [--size 256 [W]] [--window 8] [--seed 1] [--json F]

Every parameter gets a random value (:func:`mmswinv2.testing.randomize_`: logit scales up to
ln 120, past the ln 100 clamp, where the attention is sharpest and rounding is amplified most).
HF's ``Swinv2Backbone`` of the same architecture holds the weights and ours loads them through
the checkpoint converter (layout ``hf``). The reference is HF's float64 forward on the same
device. Each row is one eval-mode forward: ours as written with the explicit attention and with
the fused one (``scaled_dot_product_attention``), on the CPU also through ``mmswinv2.cpu`` (the
compiled attention kernel), in fp32 and under bf16 and fp16 autocast, and HF in the same types,
which shows what the reference itself reaches in each. Per stage: max |out - ref| /
max |ref| of the stage's map (ours before its output norm, as HF's backbone has none), and
whether every value is finite. Sizes are checked: where a stage's map is not square and not
longer than the window on one side, HF and mmswinv2 window it differently by design
(``SwinTransformerV2``'s docstring, "Small maps").

A Markdown table goes to stdout (and JSON to ``--json``). Measured results: docs/performance.md.
"""
import argparse
import json
import os
import platform
import sys

import torch
import torch.nn as nn

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', '..'))

from mmswinv2 import SwinTransformerV2  # noqa: E402
from mmswinv2.checkpoints import convert_state_dict  # noqa: E402
from mmswinv2.variants import arch_settings  # noqa: E402
from mmswinv2.testing import randomize_  # noqa: E402

DTYPES = dict(fp32=torch.float32, bf16=torch.bfloat16, fp16=torch.float16)
#: (implementation, attention) of each row; every one runs in each of DTYPES (the kernel of
#: mmswinv2.cpu on the CPU only).
IMPLEMENTATIONS = (('mmswinv2', 'explicit'), ('mmswinv2', 'fused'), ('mmswinv2.cpu', 'kernel'),
                   ('HF', 'explicit'))


def implementations(device):
    return [i for i in IMPLEMENTATIONS if i[0] != 'mmswinv2.cpu' or device == 'cpu']


def build(args):
    """HF's backbone with random weights, and ours (one per attention) with the same weights."""
    try:
        from transformers import Swinv2Backbone, Swinv2Config
    except ImportError as e:
        raise SystemExit(f'tools/analysis/precision.py needs HF transformers as the reference: '
                         f'pip install transformers ({e})')
    arch = arch_settings(args.arch)
    config = Swinv2Config(image_size=list(args.hw), patch_size=4, window_size=args.window,
                          embed_dim=arch['embed_dims'], depths=list(arch['depths']),
                          num_heads=list(arch['num_heads']), drop_path_rate=0.,
                          out_features=[f'stage{i + 1}' for i in range(len(arch['depths']))])
    hf = randomize_(Swinv2Backbone(config), seed=args.seed).eval()
    state = convert_state_dict(hf.state_dict(), 'hf')
    ours = {}
    for _, attention in implementations(args.device)[:-1]:
        model = SwinTransformerV2(arch=args.arch, window_size=args.window, drop_path_rate=0.,
                                  fused_attention=attention == 'fused',
                                  cpu_inference=attention == 'kernel')
        result = model.load_state_dict(state, strict=False)
        unexpected_missing = [k for k in result.missing_keys if not k.startswith('norm')]
        if unexpected_missing or result.unexpected_keys:
            raise RuntimeError(f'HF weights did not map onto ours: missing '
                               f'{unexpected_missing}, unexpected {result.unexpected_keys}')
        for i in range(len(arch['depths'])):  # compare the stage maps themselves
            setattr(model, f'norm{i}', nn.Identity())
        ours[attention] = model.eval().to(args.device)
    return hf.to(args.device), ours


def stage_maps(implementation, model, x):
    with torch.no_grad():
        outs = model(x).feature_maps if implementation == 'HF' else model(x)
    return [o.double() for o in outs]


def relative_errors(outs, reference):
    return [((o - r).abs().max() / r.abs().max()).item() for o, r in zip(outs, reference)]


def measure(args):
    hf, ours = build(args)
    x = torch.randn(args.batch, 3, *args.hw, generator=torch.Generator().manual_seed(args.seed))
    x = x.to(args.device)
    reference = stage_maps('HF', hf.double(), x.double())
    hf.float()
    rows = []
    for dtype in DTYPES:
        for implementation, attention in implementations(args.device):
            model = hf if implementation == 'HF' else ours[attention]
            with torch.autocast(x.device.type, dtype=DTYPES[dtype], enabled=dtype != 'fp32'):
                outs = stage_maps(implementation, model, x)
            rows.append(dict(implementation=implementation, attention=attention, dtype=dtype,
                             relative_error=relative_errors(outs, reference),
                             finite=all(bool(torch.isfinite(o).all()) for o in outs)))
    return rows


def markdown(rows, args, device_name):
    stages = len(rows[0]['relative_error'])
    lines = [f'Per-stage max |out - ref| / max |ref| against HF in float64: SwinV2 {args.arch} '
             f'window {args.window}, {args.batch} x {args.hw[0]}x{args.hw[1]}, random weights '
             f'(seed {args.seed}), {device_name}, torch {torch.__version__}', '',
             '| implementation | attention | type | '
             + ' | '.join(f'stage {i + 1}' for i in range(stages)) + ' | finite |',
             '|---|---|---|' + '---|' * stages + '---|']
    for r in rows:
        errors = ' | '.join(f'{e:.2e}' for e in r['relative_error'])
        lines.append(f"| {r['implementation']} | {r['attention']} | {r['dtype']} | {errors} | "
                     f"{'yes' if r['finite'] else '**no**'} |")
    return '\n'.join(lines)


def device_name(device):
    if device.startswith('cuda'):
        return torch.cuda.get_device_name(torch.device(device))
    return platform.processor() or platform.machine()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--arch', default='tiny', choices=['tiny', 'small', 'base', 'large'])
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--size', type=int, nargs='+', default=[256], metavar='H [W]')
    parser.add_argument('--window', type=int, default=8)
    parser.add_argument('--seed', type=int, default=1)
    parser.add_argument('--json', help='also write the rows here')
    args = parser.parse_args(argv)
    if len(args.size) not in (1, 2):
        parser.error(f'--size takes H or H W, got {args.size}')
    args.hw = (args.size[0], args.size[-1])
    for i in range(len(arch_settings(args.arch)['depths'])):
        h, w = (-(-side // 2**(i + 2)) for side in args.hw)
        if h != w and min(h, w) <= args.window:
            parser.error(f'--size {args.hw[0]} {args.hw[1]}: stage {i + 1}\'s map is {h}x{w}: '
                         f'not square, and not longer than the window ({args.window}) on one '
                         f'side. HF then attends it in windows of its shorter side, unshifted, '
                         f'and mmswinv2 per axis (SwinTransformerV2\'s docstring, "Small '
                         f'maps"): the two differ by design. Pick a size whose stage maps are '
                         f'square or longer than the window.')
    return args


def main(argv=None):
    args = parse_args(argv)
    rows = measure(args)
    name = device_name(args.device)
    print(markdown(rows, args, name))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(device=name, torch=torch.__version__, arch=args.arch,
                           window=args.window, batch=args.batch, size=list(args.hw),
                           seed=args.seed, rows=rows), f, indent=2)
    return rows


if __name__ == '__main__':
    main()
