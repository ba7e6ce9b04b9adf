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
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
from mmswinv2.checkpoints import CheckpointError  # noqa: E402
from mmswinv2.checkpoints.conversion import (FORMATS, Converted, convert_file,  # noqa: E402
                                             describe, save_atomically)
from mmswinv2.launch import documented_parser  # noqa: E402


def convert(src: str, dst: str, fmt: str = 'auto') -> Converted:
    """Convert ``src`` and write ``dst`` atomically."""
    converted = convert_file(src, fmt)
    save_atomically(converted, src, dst)
    return converted


def main(argv=None):
    parser = documented_parser(__doc__)
    parser.add_argument('src', help='checkpoint file or HF model folder')
    parser.add_argument('dst', help='output .pth')
    parser.add_argument('--format', default='auto', choices=FORMATS,
                        help='source layout (default: detected from the keys)')
    args = parser.parse_args(argv)
    try:
        converted = convert(args.src, args.dst, args.format)
    except (CheckpointError, ValueError, KeyError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    print('\n'.join(describe(converted)))
    print(f'wrote:       {args.dst}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
