"""Architecture read from weights: what a checkpoint was trained as, without flags.

Embed dims, depths and heads come from tensor shapes of the canonical state dict. Window sizes
are not in the weights (the position bias is an MLP); they come from an HF ``config.json`` or
from the official checkpoints' ``relative_coords_table`` buffers, whose extent also reveals the
pretrained window the table was normalised with.
"""
import math
import re
from typing import Dict, List, Optional

import torch


def infer_arch(state_dict: Dict[str, torch.Tensor]) -> dict:
    """``embed_dims``, ``depths``, ``num_heads``, ``patch_size``, ``in_channels`` and
    ``stage_end_norms`` (stages whose last block has a main-branch ``norm3``) of a canonical
    state dict."""
    proj = state_dict['patch_embed.proj.weight']
    depths = _blocks_per_stage(state_dict)
    return dict(
        embed_dims=proj.shape[0], in_channels=proj.shape[1], patch_size=proj.shape[-1],
        depths=depths,
        num_heads=[state_dict[f'stages.{i}.blocks.0.attn.logit_scale'].shape[0]
                   for i in range(len(depths))],
        stage_end_norms=[i for i, d in enumerate(depths)
                         if f'stages.{i}.blocks.{d - 1}.norm3.weight' in state_dict])


def _blocks_per_stage(state_dict: Dict[str, torch.Tensor]) -> List[int]:
    blocks: Dict[int, set] = {}
    for key in state_dict:
        m = re.match(r'stages\.(\d+)\.blocks\.(\d+)\.', key)
        if m:
            blocks.setdefault(int(m[1]), set()).add(int(m[2]))
    if sorted(blocks) != list(range(len(blocks))) or not blocks:
        raise KeyError(f'stages 0..n (found stages {sorted(blocks)})')
    return [len(blocks[i]) for i in range(len(blocks))]


def infer_swin_v1_arch(state_dict: Dict[str, torch.Tensor]) -> dict:
    """Arch of a Swin V1 state dict in mmdet's layout: dims, depths, heads, window size."""
    proj = state_dict['patch_embed.projection.weight']
    depths = _blocks_per_stage(state_dict)
    tables = [state_dict[f'stages.{i}.blocks.0.attn.w_msa.relative_position_bias_table']
              for i in range(len(depths))]
    rows = tables[0].shape[0]
    return dict(embed_dims=proj.shape[0], in_channels=proj.shape[1], patch_size=proj.shape[-1],
                depths=depths, num_heads=[t.shape[1] for t in tables],
                window_size=(math.isqrt(rows) + 1) // 2)


def windows_from_hf_config(config: dict) -> dict:
    """The window each stage ran with (HF clips it to a stage map no larger than the window,
    from ``image_size``) and the configured pretrained windows."""
    stages = len(config.get('depths', [0] * 4))
    window = config['window_size']
    image = config.get('image_size')
    windows = [window] * stages
    if image is not None:
        side = min(image) if isinstance(image, (list, tuple)) else image
        side //= config.get('patch_size', 4)
        windows = [min(window, max(1, side // 2**i)) for i in range(stages)]
    return dict(window_sizes=windows,
                pretrained_window_sizes=list(config.get('pretrained_window_sizes', [0] * stages)))


def pretraining_windows(windows: dict) -> List[int]:
    """The window each stage's position bias was trained with: the checkpoint's pretrained
    window where it had one, else the window that stage ran with (clipped stages count: 192 px
    at window 12 gives [12, 12, 12, 6])."""
    return [p or w for w, p in zip(windows['window_sizes'], windows['pretrained_window_sizes'])]


def windows_from_coords_tables(state_dict: Dict[str, torch.Tensor],
                               stage_key: str = r'layers\.(\d+)\.blocks\.0\.attn\.'
                               ) -> Optional[dict]:
    """Per-stage windows from the official persistent ``relative_coords_table`` buffers.

    A table for window W spans ``log2(8 (W-1) / (P-1) + 1) / 3`` at its edge, where P is the
    pretrained window (P = W when none was given), so P can be solved for exactly.
    """
    windows: List[int] = []
    pretrained: List[int] = []
    for key in sorted(k for k in state_dict if k.endswith('attn.relative_coords_table')):
        m = re.search(stage_key + 'relative_coords_table$', key)
        if not m:
            continue
        table = state_dict[key].float()
        window = (table.shape[1] + 1) // 2
        edge = table[..., 0].max().item()
        if window > 1 and edge > 0:
            p = 1 + 8 * (window - 1) / (2 ** (3 * edge) - 1)
            p = round(p)
            pretrained.append(0 if p == window else p)
        else:
            pretrained.append(0)
        windows.append(window)
    if not windows:
        return None
    return dict(window_sizes=windows, pretrained_window_sizes=pretrained)


def describe_mismatch(config: dict, checkpoint: dict) -> List[str]:
    """Differences between the model's and the checkpoint's shape-defining settings."""
    return [f'{name} {_fmt(config[name])} in config, {_fmt(checkpoint[name])} in checkpoint'
            for name in ('embed_dims', 'depths', 'num_heads', 'patch_size', 'in_channels')
            if _fmt(config[name]) != _fmt(checkpoint[name])]


def _fmt(value):
    return list(value) if isinstance(value, (list, tuple)) else value
