"""Heat maps of SwinV2's continuous position bias at the pretraining window and at target windows
(the SwinV2 paper's Figure 4), to see where a window transfer extrapolates.

    python tools/analysis/plot_position_bias.py CKPT [--stages 0 3] [--windows 8 16]
                                                     [--block 0] [--max-heads 6]
                                                     [--pretrained-window-sizes P [P P P]]
                                                     [--out-dir DIR] [--format auto|...]

CKPT: any checkpoint tools/convert_checkpoint.py reads (or a transferred one). For each stage,
one PNG ``position_bias_stage{S}_block{B}.png``: a row per window, a column per head, each cell
the bias ``16 * sigmoid(mlp(offset))`` that head adds to the attention logit of a token pair at
offset (dy, dx) (unbounded ``mlp(offset)`` for timm's cr variant). The dashed square marks the
offsets seen in pre-training, ``|dy|, |dx| <= P - 1`` for the stage's pretraining window P;
outside it the MLP extrapolates. Colours are shared by a head's cells, so windows compare.

The pretraining windows are read from the checkpoint where it records them (as the backbone's
loader does); otherwise give ``--pretrained-window-sizes``. ``--windows`` defaults to the
pretraining window and twice it.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', '..'))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from mmswinv2.checkpoints import CheckpointError  # noqa: E402
from mmswinv2.checkpoints.arch import pretraining_windows  # noqa: E402
from mmswinv2.checkpoints.conversion import FORMATS, per_stage_windows  # noqa: E402
from mmswinv2.checkpoints.loading import read_backbone_weights, recorded_windows  # noqa: E402
from mmswinv2.launch import documented_parser  # noqa: E402
from mmswinv2.models.position_bias import BIAS_RANGE, relative_coords_table  # noqa: E402


def parse_args(argv=None):
    parser = documented_parser(__doc__)
    parser.add_argument('checkpoint', help='checkpoint file or HF model folder')
    parser.add_argument('--stages', type=int, nargs='+', default=[0],
                        help='stages to plot (default: 0)')
    parser.add_argument('--windows', type=int, nargs='+',
                        help='windows to evaluate the bias at (default: the pretraining window '
                             'and twice it)')
    parser.add_argument('--block', type=int, default=0, help='block of each stage (default: 0)')
    parser.add_argument('--max-heads', type=int, default=6, help='heads per figure (default: 6)')
    parser.add_argument('--pretrained-window-sizes', type=int, nargs='+', metavar='P',
                        help='pretraining windows, for checkpoints that do not record them')
    parser.add_argument('--out-dir', default='position_bias', help='where the PNGs go')
    parser.add_argument('--format', default='auto', choices=[f for f in FORMATS if f != 'swin_v1'],
                        help='checkpoint layout (default: detected from the keys)')
    return parser.parse_args(argv)


def position_bias_tables(state_dict, stage, block, windows, trained, coords, bounded):
    """``{window: (heads, 2w-1, 2w-1)}`` bias of one block's position-bias MLP."""
    prefix = f'stages.{stage}.blocks.{block}.attn.cpb_mlp.'
    first, last = state_dict[prefix + '0.weight'], state_dict[prefix + '2.weight']
    mlp = nn.Sequential(nn.Linear(2, first.shape[0]), nn.ReLU(),
                        nn.Linear(first.shape[0], last.shape[0], bias=prefix + '2.bias' in
                                  state_dict))
    mlp.load_state_dict({k[len(prefix):]: v.float() for k, v in state_dict.items()
                         if k.startswith(prefix)})
    tables = {}
    with torch.no_grad():
        for window in windows:
            table = relative_coords_table((window, window), (trained, trained), 'cpu', coords)
            bias = mlp(table).permute(2, 0, 1)
            tables[window] = BIAS_RANGE * torch.sigmoid(bias) if bounded else bias
    return tables


def plot_stage(tables, trained, stage, block, max_heads, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    windows = sorted(tables)
    heads = min(max_heads, next(iter(tables.values())).shape[0])
    fig, axes = plt.subplots(len(windows), heads, squeeze=False, layout='constrained',
                             figsize=(2.6 * heads + 0.4, 2.2 * len(windows) + 0.6))
    for h in range(heads):
        low = min(tables[w][h].min().item() for w in windows)
        high = max(tables[w][h].max().item() for w in windows)
        for row, window in enumerate(windows):
            ax = axes[row][h]
            r = window - 1
            image = ax.imshow(tables[window][h].numpy(), cmap='viridis', vmin=low, vmax=high,
                              extent=(-r - .5, r + .5, r + .5, -r - .5))
            seen = trained - 1
            ax.add_patch(Rectangle((-seen - .5, -seen - .5), 2 * seen + 1, 2 * seen + 1,
                                   fill=False, edgecolor='white', linestyle='--', linewidth=1))
            ax.set_xticks([-r, 0, r])
            ax.set_yticks([-r, 0, r])
            ax.tick_params(labelsize=6)
            if row == 0:
                ax.set_title(f'head {h}', fontsize=8)
            if h == 0:
                ax.set_ylabel(f'window {window}\ndy', fontsize=8)
            if row == len(windows) - 1:
                ax.set_xlabel('dx', fontsize=8)
        fig.colorbar(image, ax=[axes[row][h] for row in range(len(windows))], shrink=0.6,
                     location='bottom')
    fig.suptitle(f'stage {stage}, block {block}: position bias; dashed: offsets seen in '
                 f'pre-training (window {trained})', fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    try:
        ckpt, layout, state_dict, arch = read_backbone_weights(args.checkpoint, args.format)
        num_stages = len(arch['depths'])
        for stage in args.stages:
            if not 0 <= stage < num_stages:
                raise ValueError(f'--stages: {stage} is not a stage of this checkpoint '
                                 f'(0..{num_stages - 1})')
            if not 0 <= args.block < arch['depths'][stage]:
                raise ValueError(f'--block: stage {stage} has blocks 0..'
                                 f'{arch["depths"][stage] - 1}, got {args.block}')
        if args.max_heads < 1:
            raise ValueError(f'--max-heads must be positive, got {args.max_heads}')
        if args.windows is not None:
            per_stage_windows('--windows', args.windows, len(args.windows))
        if args.pretrained_window_sizes is not None:
            trained = per_stage_windows('--pretrained-window-sizes',
                                        args.pretrained_window_sizes, num_stages)
        else:
            windows = recorded_windows(ckpt, layout)
            if windows is None:
                raise CheckpointError(
                    f'{args.checkpoint} ({layout.name} layout) does not record the windows it '
                    f'was pretrained with: pass --pretrained-window-sizes')
            trained = pretraining_windows(windows)
    except (CheckpointError, ValueError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    meta = ckpt.extra.get('meta') if isinstance(ckpt.extra.get('meta'), dict) else {}
    options = layout.required_options or meta.get('backbone_options') or {}
    coords = options.get('cpb_coords', 'normalized_log2')
    bounded = options.get('cpb_bounded', True)
    os.makedirs(args.out_dir, exist_ok=True)
    for stage in args.stages:
        windows = args.windows or [trained[stage], 2 * trained[stage]]
        tables = position_bias_tables(state_dict, stage, args.block, windows, trained[stage],
                                      coords, bounded)
        path = os.path.join(args.out_dir, f'position_bias_stage{stage}_block{args.block}.png')
        plot_stage(tables, trained[stage], stage, args.block, args.max_heads, path)
        outside = [f'window {w}: {1 - (2 * min(w, trained[stage]) - 1) ** 2 / (2 * w - 1) ** 2:.0%}'
                   for w in windows]
        print(f'stage {stage} (pretraining window {trained[stage]}): offsets extrapolated, '
              f'{", ".join(outside)}; wrote {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
