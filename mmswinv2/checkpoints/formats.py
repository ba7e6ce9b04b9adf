"""Public SwinV2 weight layouts, each as data: a key map into mmswinv2's canonical layout.

The canonical layout is :class:`~mmswinv2.SwinTransformerV2`'s own state dict::

    patch_embed.proj.*, patch_embed.norm.*
    stages.{i}.downsample.{reduction.weight, norm.*}    i = 1..3, merge at the stage *start*,
                                                         official 2x2 channel order
    stages.{i}.blocks.{j}.{norm1, norm2, mlp.fc1, mlp.fc2}.*
    stages.{i}.blocks.{j}.attn.{qkv.weight, q_bias, v_bias, logit_scale, cpb_mlp.{0,2}.*, proj.*}
    norm{i}.*                                            one LayerNorm per output index

A :class:`Layout` converts a state dict in four declarative steps: drop regenerable buffers and
classifier heads, rename keys with ordered regex rules, fuse split q/k/v projections, and check
that nothing unknown is left. Adding a format is adding a table.
"""
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, Tuple, Union

import torch

Rename = Tuple[str, Union[str, Callable[[re.Match], str]]]

#: Buffers every implementation regenerates for the window it runs with; never copied.
REGENERABLE_BUFFERS = (r'attn_mask$', r'relative_position_index$', r'relative_coords_table$',
                       r'relative_coordinates_log$', r'k_bias$')


def _next_stage_downsample(prefix: str) -> Rename:
    """Merge at the end of stage i (official / HF) -> at the start of stage i+1 (ours)."""
    return (prefix + r'(\d+)\.downsample\.',
            lambda m: f'stages.{int(m[1]) + 1}.downsample.')


@dataclass(frozen=True)
class Layout:
    """How one public layout maps onto the canonical one.

    Attributes:
        name: the format's name, as used by ``--format``.
        drop: regexes of keys that carry no backbone weights (heads) or regenerable buffers.
        renames: ordered ``(pattern, replacement)`` regex rules, each applied once per key.
        fuse_qkv: suffixes ``(q, k, v)`` of separate projection weights to concatenate into
            ``attn.qkv.weight`` (HF).
    """
    name: str
    drop: Tuple[str, ...] = ()
    renames: Tuple[Rename, ...] = ()
    fuse_qkv: Tuple[str, str, str] = ()
    description: str = field(default='', compare=False)

    def convert(self, state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Return the canonical state dict; input tensors are not modified."""
        dropped = re.compile('|'.join(self.drop + REGENERABLE_BUFFERS))
        out: Dict[str, torch.Tensor] = {}
        for key, value in state_dict.items():
            if dropped.search(key):
                continue
            for pattern, replacement in self.renames:
                key = re.sub(pattern, replacement, key, count=1)
            out[key] = value
        if self.fuse_qkv:
            out = _fuse_qkv(out, *self.fuse_qkv)
        return out


def _fuse_qkv(state_dict: Dict[str, torch.Tensor], q: str, k: str, v: str):
    out = {}
    for key, value in state_dict.items():
        if key.endswith(k) or key.endswith(v):
            continue
        if key.endswith(q):
            prefix = key[:-len(q)]
            missing = [prefix + s for s in (k, v) if prefix + s not in state_dict]
            if missing:
                raise KeyError(f'{key} has no matching {", ".join(missing)}')
            value = torch.cat([state_dict[prefix + s] for s in (q, k, v)], dim=0)
            key = prefix + 'qkv.weight'
        out[key] = value
    return out


OFFICIAL = Layout(
    name='official',
    description='microsoft/Swin-Transformer SwinV2 .pth (downsample at the end of each stage)',
    drop=(r'^head\.',),
    renames=(_next_stage_downsample(r'^layers\.'),
             (r'^layers\.', 'stages.'),
             (r'^norm\.', 'norm3.')),
)

TIMM = Layout(
    name='timm',
    description='timm swinv2_* (downsample at the start of the next stage, head.fc)',
    drop=(r'^head\.',),
    renames=((r'^layers\.', 'stages.'),
             (r'^norm\.', 'norm3.')),
)

HF = Layout(
    name='hf',
    description='HF transformers Swinv2Model / Swinv2ForImageClassification / Swinv2Backbone',
    drop=(r'^classifier\.', r'(^|\.)hidden_states_norms\.'),
    renames=((r'^swinv2\.', ''),
             (r'^embeddings\.patch_embeddings\.projection\.', 'patch_embed.proj.'),
             (r'^embeddings\.norm\.', 'patch_embed.norm.'),
             _next_stage_downsample(r'^encoder\.layers\.'),
             (r'^encoder\.layers\.', 'stages.'),
             (r'\.attention\.self\.query\.bias$', '.attn.q_bias'),
             (r'\.attention\.self\.value\.bias$', '.attn.v_bias'),
             (r'\.attention\.self\.continuous_position_bias_mlp\.', '.attn.cpb_mlp.'),
             (r'\.attention\.self\.', '.attn.'),
             (r'\.attention\.output\.dense\.', '.attn.proj.'),
             (r'\.layernorm_before\.', '.norm1.'),
             (r'\.layernorm_after\.', '.norm2.'),
             (r'\.intermediate\.dense\.', '.mlp.fc1.'),
             (r'\.output\.dense\.', '.mlp.fc2.'),
             (r'^layernorm\.', 'norm3.')),
    fuse_qkv=('query.weight', 'key.weight', 'value.weight'),
)

LAYOUTS: Dict[str, Layout] = {layout.name: layout for layout in (OFFICIAL, TIMM, HF)}


def convert_state_dict(state_dict: Dict[str, torch.Tensor], layout: str) -> Dict[str, torch.Tensor]:
    """Convert ``state_dict`` from the named public layout to the canonical one."""
    if layout not in LAYOUTS:
        raise ValueError(f'unknown layout {layout!r}; known: {sorted(LAYOUTS)}')
    return LAYOUTS[layout].convert(state_dict)


