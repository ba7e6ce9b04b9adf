"""Convert a public SwinV2 checkpoint into an mmswinv2 / OpenMMLab checkpoint.

    python tools/convert_checkpoint.py SRC DST [--format auto|official|hf|timm|mmpretrain|
                                                          simmim|mmdet|mmswinv2|swin_v1]

SRC: an official microsoft/Swin-Transformer ``.pth``, an HF model folder (``config.json`` +
``model.safetensors`` / ``pytorch_model.bin``) or weight file, a timm ``swinv2_*`` file, an
mmpretrain or SimMIM checkpoint, or a whole mmdet/mmseg checkpoint of a model using this backbone.
The layout and architecture are read from the file; no architecture flags are needed.

DST gets ``{'state_dict': <backbone weights, our layout>, 'meta': {...}}`` with the source
format, arch (embed dims, depths, heads), and window / pretrained window sizes when the source
records them. Use it with ``init_cfg=dict(type='Pretrained', checkpoint=DST)`` (the backbone
also reads SRC directly).

Swin V1 checkpoints (official, timm, HF; detected, or ``--format swin_v1``) are converted for
mmdet's / mmseg's own ``SwinTransformer`` instead: ``backbone.``-prefixed keys in their layout, to
load with ``type='SwinTransformer', convert_weights=False,
init_cfg=dict(type='Pretrained', checkpoint=DST)``.

Nothing is written unless the conversion succeeds.
"""
import argparse
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
from mmswinv2 import __version__  # noqa: E402
from mmswinv2.checkpoints import LAYOUTS, CheckpointError, read_checkpoint  # noqa: E402
from mmswinv2.checkpoints.arch import infer_swin_v1_arch, pretraining_windows  # noqa: E402
from mmswinv2.checkpoints.formats import V1_LAYOUTS, detect_v1_layout  # noqa: E402
from mmswinv2.checkpoints.loading import backbone_weights, recorded_windows  # noqa: E402

FORMATS = ['auto', *LAYOUTS, 'swin_v1']


def convert(src: str, dst: str, fmt: str = 'auto') -> dict:
    """Convert ``src`` and write ``dst`` atomically; return the summary printed by the CLI."""
    if os.path.abspath(src) == os.path.abspath(dst):
        raise CheckpointError(f'{dst}: refusing to overwrite the source checkpoint')
    ckpt = read_checkpoint(src)
    is_v1 = fmt == 'swin_v1' or (
        fmt == 'auto' and any(v1.matches(ckpt.state_dict) for v1 in V1_LAYOUTS.values()))
    if is_v1:
        return _convert_swin_v1(ckpt, dst)
    ckpt, layout, state_dict, arch = backbone_weights(ckpt, fmt)
    windows = recorded_windows(ckpt, layout)
    options = dict(layout.required_options)
    if arch['stage_end_norms']:
        options['stage_end_norms'] = tuple(arch['stage_end_norms'])
    meta = dict(source=os.path.abspath(src), source_format=layout.name, arch=arch,
                backbone_options=options,
                window_sizes=windows and windows['window_sizes'],
                pretrained_window_sizes=windows and windows['pretrained_window_sizes'],
                pretraining_windows=windows and pretraining_windows(windows),
                mmswinv2_version=__version__)
    _save_atomically({'state_dict': state_dict, 'meta': meta}, dst)
    return dict(meta, dst=dst, parameters=sum(v.numel() for v in state_dict.values()),
                dropped=layout.dropped(ckpt.state_dict))


def _convert_swin_v1(ckpt, dst):
    layout = detect_v1_layout(ckpt.state_dict, ckpt.path)
    state_dict = layout.convert(ckpt.state_dict)
    try:
        arch = infer_swin_v1_arch(state_dict)
    except (KeyError, IndexError) as err:
        raise CheckpointError(f'{ckpt.path}: read as {layout.name} but {err} is missing') from None
    meta = dict(source=os.path.abspath(ckpt.path), source_format=layout.name, arch=arch,
                window_sizes=[arch['window_size']] * len(arch['depths']),
                pretrained_window_sizes=None, mmswinv2_version=__version__,
                target="mmdet / mmseg SwinTransformer (convert_weights=False)")
    _save_atomically({'state_dict': {f'backbone.{k}': v for k, v in state_dict.items()},
                      'meta': meta}, dst)
    return dict(meta, dst=dst, parameters=sum(v.numel() for v in state_dict.values()),
                dropped=layout.dropped(ckpt.state_dict))


def _save_atomically(obj, dst):
    folder = os.path.dirname(os.path.abspath(dst))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.converting-', suffix='.pth', dir=folder)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split('\n\n', 1)[1])
    parser.add_argument('src', help='checkpoint file or HF model folder')
    parser.add_argument('dst', help='output .pth')
    parser.add_argument('--format', default='auto', choices=FORMATS,
                        help='source layout (default: detected from the keys)')
    args = parser.parse_args(argv)
    try:
        summary = convert(args.src, args.dst, args.format)
    except (CheckpointError, ValueError, KeyError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    arch = summary['arch']
    dropped = summary['dropped']
    if summary['window_sizes'] is None:
        windows = ('not recorded in the file: set window_size / pretrained_window_sizes in '
                   'your config')
    elif summary.get('pretraining_windows') is None:  # Swin V1: a table per window size
        windows = f"{summary['window_sizes']}"
    else:
        windows = (f"{summary['window_sizes']}, pretrained {summary['pretrained_window_sizes']} "
                   f"(position bias trained at windows {summary['pretraining_windows']})")
    layout = {**LAYOUTS, **V1_LAYOUTS}[summary['source_format']]
    print(f"format:      {summary['source_format']} ({layout.description})")
    if 'target' in summary:
        print(f"target:      {summary['target']}")
    print(f"arch:        embed_dims {arch['embed_dims']}, depths {arch['depths']}, "
          f"num_heads {arch['num_heads']}, patch {arch['patch_size']}")
    print(f'windows:     {windows}')
    if summary.get('backbone_options'):
        print('options:     the backbone needs ' + ', '.join(
            f'{k}={v!r}' for k, v in summary['backbone_options'].items()))
    print(f"parameters:  {summary['parameters'] / 1e6:.2f} M")
    print(f"dropped:     {len(dropped['regenerable_buffers'])} regenerable buffers, "
          f"{len(dropped['heads'])} head tensors, {len(dropped['outside_backbone'])} "
          f"non-backbone tensors")
    print(f"wrote:       {summary['dst']}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
