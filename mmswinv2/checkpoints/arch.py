"""Architecture read from weights: what a checkpoint was trained as, without flags.

Embed dims, depths and heads come from tensor shapes of the canonical state dict. Window sizes
are not in the weights (the position bias is an MLP); they come from an HF ``config.json`` or
from the official checkpoints' ``relative_coords_table`` buffers, whose extent also reveals the
pretrained window the table was normalised with.
"""
import re
from typing import Dict, List, Optional

import torch


def infer_arch(state_dict: Dict[str, torch.Tensor]) -> dict:
    """``embed_dims``, ``depths``, ``num_heads``, ``patch_size``, ``in_channels`` of a canonical
    state dict."""
    proj = state_dict['patch_embed.proj.weight']
    blocks: Dict[int, set] = {}
    for key in state_dict:
        m = re.match(r'stages\.(\d+)\.blocks\.(\d+)\.', key)
        if m:
            blocks.setdefault(int(m[1]), set()).add(int(m[2]))
    stages = sorted(blocks)
    return dict(
        embed_dims=proj.shape[0], in_channels=proj.shape[1], patch_size=proj.shape[-1],
        depths=[len(blocks[i]) for i in stages],
        num_heads=[state_dict[f'stages.{i}.blocks.0.attn.logit_scale'].shape[0] for i in stages])


def windows_from_hf_config(config: dict) -> dict:
    stages = len(config.get('depths', [0] * 4))
    return dict(window_sizes=[config['window_size']] * stages,
                pretrained_window_sizes=list(config.get('pretrained_window_sizes', [0] * stages)))


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


