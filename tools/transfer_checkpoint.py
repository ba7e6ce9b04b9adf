"""Transfer a Swin checkpoint to new attention windows (e.g. pretrained at window 8, fine-tuned
and tested at window 16-48 on 512-1536 px inputs).

    python tools/transfer_checkpoint.py SRC DST --window-size W [W W W W]
                                               [--img-size H [W]] [--pretrained-window-sizes P..]
                                               [--format auto|official|hf|...|swin_v1]

SRC: any checkpoint tools/convert_checkpoint.py reads (official, HF, timm, mmpretrain, SimMIM,
whole mmdet/mmseg checkpoints, ours; Swin V1 from official, timm or HF).

SwinV2: the weights stay as they are; the continuous position bias is an MLP of the offsets,
evaluated at the new window with the offsets normalised by the window each stage was pretrained
with. DST is our layout with those windows in its meta (``pretraining_windows``), read from SRC
(official / SimMIM / mmpretrain buffers, an HF config.json, our meta; clipped stages count:
192 px at window 12 gives 12 12 12 6). A source that records none (timm, plain state dicts)
needs ``--pretrained-window-sizes``. The tool prints the backbone fragment for your config and,
with ``--img-size``, the map size, window and shift of every stage at that input size.

Swin V1: every ``relative_position_bias_table`` is resized bicubically to the new window, the
same operation mmdet's ``SwinTransformer.init_weights`` applies (an absolute position embedding,
if any, to the patch grid of ``--img-size``). DST is for mmdet's / mmseg's ``SwinTransformer``:
``window_size=W, convert_weights=False, init_cfg=dict(type='Pretrained', checkpoint=DST)``.

Nothing is written unless everything succeeds; an existing DST is replaced atomically.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
from mmswinv2.checkpoints import CheckpointError  # noqa: E402
from mmswinv2.checkpoints.conversion import (FORMATS, backbone_fragment,  # noqa: E402
                                             convert_file, describe, save_atomically,
                                             stage_plan, transfer_windows)
from mmswinv2.launch import documented_parser  # noqa: E402


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not an integer') from None
    if value < 1:
        raise argparse.ArgumentTypeError(f'{value} is not positive')
    return value


def parse_args(argv):
    parser = documented_parser(__doc__)
    parser.add_argument('src', help='checkpoint file or HF model folder')
    parser.add_argument('dst', help='output .pth')
    parser.add_argument('--window-size', type=positive_int, nargs='+', required=True,
                        metavar='W', help='new window: one for all stages, or one per stage')
    parser.add_argument('--img-size', type=positive_int, nargs='+', metavar='SIZE',
                        help='input size H [W] to plan the stages for (and, for Swin V1, to '
                             'resize an absolute position embedding to)')
    parser.add_argument('--pretrained-window-sizes', type=positive_int, nargs='+', metavar='P',
                        help='windows the position bias was trained with, for sources that do '
                             'not record them; overrides what the source records')
    parser.add_argument('--format', default='auto', choices=FORMATS,
                        help='source layout (default: detected from the keys)')
    args = parser.parse_args(argv)
    if args.img_size is not None and len(args.img_size) > 2:
        parser.error(f'--img-size: give H or H W, got {len(args.img_size)} values')
    return args


def transfer(src, dst, window_size, img_size=None, pretrained_window_sizes=None, fmt='auto'):
    """Convert ``src``, move it to ``window_size`` and write ``dst`` atomically.
    Returns ``(converted, warnings)``."""
    converted = convert_file(src, fmt)
    warnings = transfer_windows(converted, window_size, pretrained_window_sizes, img_size)
    save_atomically(converted, src, dst)
    return converted, warnings


def main(argv=None):
    args = parse_args(argv)
    img_size = None
    if args.img_size:
        img_size = (args.img_size[0], args.img_size[-1])
    try:
        converted, warnings = transfer(args.src, args.dst, args.window_size, img_size,
                                       args.pretrained_window_sizes, args.format)
    except (CheckpointError, ValueError, KeyError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    for warning in warnings:
        print(f'warning: {warning}', file=sys.stderr)
    meta = converted.meta
    print('\n'.join(describe(converted)))
    print(f"from:        windows {meta['transferred_from']['window_sizes']}")
    if converted.is_swin_v1:
        print(f"backbone:    type='SwinTransformer', window_size={meta['arch']['window_size']}, "
              f"convert_weights=False, init_cfg=dict(type='Pretrained', checkpoint='{args.dst}')")
    else:
        print(f'backbone:    {backbone_fragment(meta)}')
        if img_size is not None:
            windows = meta['window_sizes']
            print(f'at {img_size[0]}x{img_size[1]}:')
            for stage in stage_plan(img_size, meta['arch']['patch_size'], windows):
                clipped = ' (clipped to the map)' if stage['window'] != (
                    windows[stage['stage']],) * 2 else ''
                print(f"  stage {stage['stage']}: map {stage['map'][0]}x{stage['map'][1]}, "
                      f"window {stage['window'][0]}x{stage['window'][1]}{clipped}, shift "
                      f"{stage['shift'][0]}x{stage['shift'][1]} in odd blocks, "
                      f"{stage['windows_per_image']} windows per image")
    print(f'wrote:       {args.dst}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
