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
from dataclasses import dataclass, field, replace
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
        signature: regex one key must match (after ``prefix`` is stripped) for detection.
        exclude: regex no key may match for detection.
        prefix: wrapper prefix (``backbone.``, ``encoder.``): when keys carry it, only those keys
            are kept (other heads and necks are ignored) and it is stripped.
        drop: regexes of keys that carry no backbone weights (heads) or regenerable buffers.
        renames: ordered ``(pattern, replacement)`` regex rules, each applied once per key.
        fuse_qkv: suffixes ``(q, k, v)`` of separate projection weights to concatenate into
            ``attn.qkv.weight`` (HF).
        reorders: ``(pattern, function)``: tensors whose canonical key matches are transformed.
    """
    name: str
    signature: str = ''
    exclude: str = ''
    prefix: str = ''
    drop: Tuple[str, ...] = ()
    renames: Tuple[Rename, ...] = ()
    fuse_qkv: Tuple[str, str, str] = ()
    reorders: Tuple[Tuple[str, Callable[[torch.Tensor], torch.Tensor]], ...] = ()
    description: str = field(default='', compare=False)

    def unwrap(self, state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Keep only the keys under ``prefix`` (stripped), if any key has it."""
        if self.prefix and any(k.startswith(self.prefix) for k in state_dict):
            n = len(self.prefix)
            return {k[n:]: v for k, v in state_dict.items() if k.startswith(self.prefix)}
        return state_dict

    def matches(self, state_dict: Dict[str, torch.Tensor]) -> bool:
        keys = list(self.unwrap(state_dict))
        return (any(re.search(self.signature, k) for k in keys)
                and not (self.exclude and any(re.search(self.exclude, k) for k in keys)))

    def dropped(self, state_dict: Dict[str, torch.Tensor]) -> Dict[str, list]:
        """Source keys that :meth:`convert` does not carry over, by reason."""
        inner = self.unwrap(state_dict)
        outside = [k for k in state_dict if self.prefix and inner is not state_dict
                   and not k.startswith(self.prefix)]
        buffers = re.compile('|'.join(REGENERABLE_BUFFERS))
        heads = re.compile('|'.join(self.drop)) if self.drop else None
        return dict(
            regenerable_buffers=[k for k in inner if buffers.search(k)],
            heads=[k for k in inner if heads and heads.search(k) and not buffers.search(k)],
            outside_backbone=outside)

    def convert(self, state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Return the canonical state dict; input tensors are not modified."""
        dropped = re.compile('|'.join(self.drop + REGENERABLE_BUFFERS))
        out: Dict[str, torch.Tensor] = {}
        for key, value in self.unwrap(state_dict).items():
            if dropped.search(key):
                continue
            for pattern, replacement in self.renames:
                key = re.sub(pattern, replacement, key, count=1)
            out[key] = value
        if self.fuse_qkv:
            out = _fuse_qkv(out, *self.fuse_qkv)
        for pattern, function in self.reorders:
            out = {k: function(v) if re.search(pattern, k) else v for k, v in out.items()}
        return out


def unfold_to_official_order(weight: torch.Tensor) -> torch.Tensor:
    """Patch-merging reduction weight ``(out, 4C)`` from ``nn.Unfold`` channel order (mmcv /
    mmpretrain: channel-major, positions (0,0), (0,1), (1,0), (1,1)) to the official order
    (position-major: (0,0), (1,0), (0,1), (1,1)). Swapping positions 1 and 2 is its own inverse."""
    out_dims, in_dims = weight.shape
    w = weight.reshape(out_dims, in_dims // 4, 4).transpose(1, 2)  # (out, position, C)
    return w[:, [0, 2, 1, 3]].reshape(out_dims, in_dims)


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


_V2_QKV = r'^layers\.\d+\.blocks\.\d+\.attn\.qkv\.weight$'
_V1_MARK = r'relative_position_bias_table'

CANONICAL = Layout(
    name='mmswinv2',
    description='mmswinv2 SwinTransformerV2 state dict (what tools/convert_checkpoint.py writes)',
    signature=r'^stages\.\d+\.blocks\.\d+\.attn\.qkv\.weight$',
    exclude=_V1_MARK,
)

MMDET = replace(
    CANONICAL, name='mmdet', prefix='backbone.',
    description='whole MMDetection / MMSegmentation checkpoint of a model using this backbone')

OFFICIAL = Layout(
    name='official',
    description='microsoft/Swin-Transformer SwinV2 .pth (downsample at the end of each stage)',
    signature=r'^layers\.0\.downsample\.reduction\.weight$',
    exclude=_V1_MARK,
    drop=(r'^head\.',),
    renames=(_next_stage_downsample(r'^layers\.'),
             (r'^layers\.', 'stages.'),
             (r'^norm\.', 'norm3.')),
)

SIMMIM = replace(
    OFFICIAL, name='simmim', prefix='encoder.',
    description='SimMIM pre-training checkpoint (official SwinV2 under encoder.)',
    exclude=r'\.attention\.self\.|' + _V1_MARK,  # HF's Swinv2Model keys also start "encoder."
    drop=OFFICIAL.drop + (r'^mask_token$',))

TIMM = Layout(
    name='timm',
    description='timm swinv2_* (downsample at the start of the next stage, head.fc)',
    signature=_V2_QKV,
    exclude=r'^layers\.0\.downsample\.|' + _V1_MARK,
    drop=(r'^head\.',),
    renames=((r'^layers\.', 'stages.'),
             (r'^norm\.', 'norm3.')),
)

HF = Layout(
    name='hf',
    description='HF transformers Swinv2Model / Swinv2ForImageClassification / Swinv2Backbone',
    signature=r'\.attention\.self\.continuous_position_bias_mlp\.',
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

MMPRETRAIN = Layout(
    name='mmpretrain',
    description='mmpretrain SwinTransformerV2 (backbone. prefix, w_msa, Unfold merge order)',
    prefix='backbone.',
    signature=r'\.attn\.w_msa\.cpb_mlp\.',
    renames=((r'^patch_embed\.projection\.', 'patch_embed.proj.'),
             (r'\.attn\.w_msa\.', '.attn.'),
             (r'\.ffn\.layers\.0\.0\.', '.mlp.fc1.'),
             (r'\.ffn\.layers\.1\.', '.mlp.fc2.')),
    reorders=((r'^stages\.\d+\.downsample\.reduction\.weight$', unfold_to_official_order),),
)

#: In detection order: a wrapped layout also accepts unwrapped keys, so each bare layout is
#: tried before its wrapped twin (a bare official file is "official", not "simmim").
LAYOUTS: Dict[str, Layout] = {layout.name: layout for layout in (
    CANONICAL, MMDET, OFFICIAL, HF, SIMMIM, TIMM, MMPRETRAIN)}


def detect_layout(state_dict: Dict[str, torch.Tensor], source: str = 'checkpoint') -> Layout:
    """The layout whose signature the keys match; a clear error if none does."""
    for layout in LAYOUTS.values():
        if layout.matches(state_dict):
            return layout
    raise ValueError(
        f'{source}: unknown weight layout. First keys: {list(state_dict)[:8]}. Known formats: '
        + '; '.join(f'{name} ({layout.description})' for name, layout in LAYOUTS.items()))


def resolve_layout(state_dict: Dict[str, torch.Tensor], fmt: str = 'auto',
                   source: str = 'checkpoint') -> Layout:
    """The detected layout (``fmt='auto'``), or the named one after checking the keys fit it."""
    if fmt == 'auto':
        return detect_layout(state_dict, source)
    if fmt not in LAYOUTS:
        raise ValueError(f'unknown format {fmt!r}; known: auto, {", ".join(LAYOUTS)}')
    layout = LAYOUTS[fmt]
    if not layout.matches(state_dict):
        try:
            detected = f'it looks like {detect_layout(state_dict, source).name}'
        except ValueError:
            detected = 'no known layout matches it'
        raise ValueError(f'{source}: format {fmt!r} was requested, but no key matches that '
                         f'layout (expected one like /{layout.signature}/); {detected}')
    return layout


def convert_state_dict(state_dict: Dict[str, torch.Tensor],
                       layout: str = 'auto') -> Dict[str, torch.Tensor]:
    """Convert ``state_dict`` from the named public layout (or the detected one) to ours."""
    return resolve_layout(state_dict, layout).convert(state_dict)


