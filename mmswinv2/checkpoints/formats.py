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

from ..variants import TIMM_CR_SETTINGS

Rename = Tuple[str, Union[str, Callable[[re.Match], str]]]

#: Buffers every implementation regenerates for the window it runs with; never copied.
#: (timm's zero ``k_bias`` buffer is dropped by the timm layout: in timm cr and in our
#: ``learnable_k_bias`` models a ``k_bias`` is a weight.)
REGENERABLE_BUFFERS = (r'attn_mask$', r'relative_position_index$', r'relative_coords_table$',
                       r'relative_coordinates_log$',
                       # Our backbone's record of its pretrained windows: a trained model's own
                       # checkpoint restores it; loaded as pretrained weights, the checkpoint's
                       # windows are read from its records (see loading.recorded_windows).
                       r'^pretrained_windows$')


def _next_stage_downsample(prefix: str) -> Rename:
    """Merge at the end of stage i (official / HF) -> at the start of stage i+1 (ours)."""
    return (prefix + r'(\d+)\.downsample\.',
            lambda m: f'stages.{int(m[1]) + 1}.downsample.')


@dataclass(frozen=True)
class Layout:
    """How one public layout maps onto the canonical one.

    Attributes:
        name: the format's name, as used by ``--format``.
        signature: regex (or tuple of regexes) each matched by some key (after ``prefix`` is
            stripped) for detection.
        exclude: regex no key may match for detection.
        prefix: wrapper prefix (``backbone.``, ``encoder.``): when keys carry it, only those keys
            are kept (other heads and necks are ignored) and it is stripped.
        drop: regexes of keys that carry no backbone weights (heads) or regenerable buffers.
        renames: ordered ``(pattern, replacement)`` regex rules, each applied once per key.
        fuse_qkv: module names ``(q, k, v, fused)``: separate q/k/v projections (weights and
            biases) are concatenated into one ``fused`` projection (HF).
        transforms: ``(pattern, function)``: each canonical key matching ``pattern`` is replaced
            by ``function(key, tensor)``, a dict of new keys and tensors (reorders, splits).
        required_options: backbone options a model needs to hold this layout's weights
            (timm cr is a different network).
    """
    name: str
    signature: Union[str, Tuple[str, ...]] = ''
    exclude: str = ''
    prefix: str = ''
    drop: Tuple[str, ...] = ()
    renames: Tuple[Rename, ...] = ()
    fuse_qkv: Tuple[str, str, str, str] = ()
    transforms: Tuple[Tuple[str, Callable[[str, torch.Tensor], Dict[str, torch.Tensor]]], ...] = ()
    required_options: Dict[str, object] = field(default_factory=dict, compare=False)
    description: str = field(default='', compare=False)

    def unwrap(self, state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Keep only the keys under ``prefix`` (stripped), if any key has it."""
        if self.prefix and any(k.startswith(self.prefix) for k in state_dict):
            n = len(self.prefix)
            return {k[n:]: v for k, v in state_dict.items() if k.startswith(self.prefix)}
        return state_dict

    def matches(self, state_dict: Dict[str, torch.Tensor]) -> bool:
        keys = list(self.unwrap(state_dict))
        signatures = (self.signature,) if isinstance(self.signature, str) else self.signature
        return (all(any(re.search(sig, k) for k in keys) for sig in signatures)
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
        for pattern, function in self.transforms:
            transformed: Dict[str, torch.Tensor] = {}
            for key, value in out.items():
                transformed.update(function(key, value) if re.search(pattern, key) else
                                   {key: value})
            out = transformed
        return out


def _fuse_qkv(state_dict: Dict[str, torch.Tensor], q: str, k: str, v: str, fused: str):
    """Concatenate ``<m>.{q,k,v}.{weight,bias}`` into ``<m>.{fused}.{weight,bias}``."""
    pattern = re.compile(rf'^(.*\.)({re.escape(q)}|{re.escape(k)}|{re.escape(v)})\.(weight|bias)$')
    out = {}
    for key, value in state_dict.items():
        m = pattern.match(key)
        if m is None:
            out[key] = value
        elif m[2] == q:
            parts = [f'{m[1]}{name}.{m[3]}' for name in (q, k, v)]
            missing = [p for p in parts if p not in state_dict]
            if missing:
                raise KeyError(f'{key} has no matching {", ".join(missing)}')
            out[f'{m[1]}{fused}.{m[3]}'] = torch.cat([state_dict[p] for p in parts], dim=0)
    return out


# 2x2 patch merging concatenates 4 neighbours into 4C channels. Official / timm / HF / ours order
# them position-major, (0,0), (1,0), (0,1), (1,1); mmcv's nn.Unfold (mmdet, mmseg, mmpretrain)
# channel-major with positions (0,0), (0,1), (1,0), (1,1). Both functions act on the last axis
# (a reduction weight's input channels, or a V1 pre-norm's 4C parameters).
_SWAP_MIDDLE_POSITIONS = [0, 2, 1, 3]


def unfold_to_official_order(t: torch.Tensor) -> torch.Tensor:
    """4C channels from nn.Unfold order to the official order."""
    *lead, channels = t.shape
    t = t.reshape(*lead, channels // 4, 4).transpose(-1, -2)  # (..., position, C)
    return t[..., _SWAP_MIDDLE_POSITIONS, :].reshape(*lead, channels)


def official_to_unfold_order(t: torch.Tensor) -> torch.Tensor:
    """4C channels from the official order to nn.Unfold order (mmdet / mmseg V1 layout)."""
    *lead, channels = t.shape
    t = t.reshape(*lead, 4, channels // 4)[..., _SWAP_MIDDLE_POSITIONS, :]
    return t.transpose(-1, -2).reshape(*lead, channels)


def _same_key(function: Callable[[torch.Tensor], torch.Tensor]):
    return lambda key, value: {key: function(value)}


def _split_qkv_bias(key: str, value: torch.Tensor) -> Dict[str, torch.Tensor]:
    stem = key[:-len('qkv.bias')]
    return dict(zip((stem + 'q_bias', stem + 'k_bias', stem + 'v_bias'), value.chunk(3)))


def _per_head_logit_scale(key: str, value: torch.Tensor) -> Dict[str, torch.Tensor]:
    return {key: value.reshape(-1, 1, 1)}


def _tau_to_logit_scale(key: str, value: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Old timm cr checkpoints store the temperature tau; logit_scale = ln(1 / tau)."""
    return {key[:-len('tau')] + 'logit_scale': torch.log(1 / value).reshape(-1, 1, 1)}


_V2_QKV = r'^layers\.\d+\.blocks\.\d+\.attn\.qkv\.weight$'
_V1_MARK = r'relative_position_bias_table'

CANONICAL = Layout(
    name='mmswinv2',
    description='mmswinv2 SwinTransformerV2 state dict (what tools/convert_checkpoint.py writes)',
    signature=r'^stages\.\d+\.blocks\.\d+\.attn\.qkv\.weight$',
    exclude=_V1_MARK + r'|\.attn\.meta_mlp\.',  # timm cr also uses stages.i.blocks.j.attn.qkv
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
    drop=(r'^head\.', r'\.attn\.k_bias$'),
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
    fuse_qkv=('query', 'key', 'value', 'qkv'),
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
    transforms=((r'^stages\.\d+\.downsample\.reduction\.weight$',
                 _same_key(unfold_to_official_order)),),
)

TIMM_CR = Layout(
    name='timm_cr',
    description='timm swinv2_cr_* (a different network: learnable k bias, ln coordinates, '
                '384-wide unbounded position-bias MLP, LayerNorm before merging, stage-end norms)',
    signature=r'\.attn\.meta_mlp\.fc1\.weight$',
    drop=(r'^head\.',),
    renames=((r'\.attn\.meta_mlp\.fc1\.', '.attn.cpb_mlp.0.'),
             (r'\.attn\.meta_mlp\.fc2\.', '.attn.cpb_mlp.2.')),
    transforms=((r'\.attn\.qkv\.bias$', _split_qkv_bias),
                (r'\.attn\.logit_scale$', _per_head_logit_scale),
                (r'\.attn\.tau$', _tau_to_logit_scale)),
    required_options=TIMM_CR_SETTINGS,
)

#: In detection order: a wrapped layout also accepts unwrapped keys, so each bare layout is
#: tried before its wrapped twin (a bare official file is "official", not "simmim").
LAYOUTS: Dict[str, Layout] = {layout.name: layout for layout in (
    CANONICAL, MMDET, OFFICIAL, HF, SIMMIM, TIMM, MMPRETRAIN, TIMM_CR)}


# ---- Swin V1 ------------------------------------------------------------------------------
# V1 weights do not fit SwinV2 (pre-norm, dot-product attention, bias tables). They convert to
# the layout of mmdet's and mmseg's own ``SwinTransformer`` so V1 baselines run in the same
# configs and tools: patch_embed.projection, stages.{i}.blocks.{j}.{norm1, norm2,
# attn.w_msa.{qkv, proj, relative_position_bias_table}, ffn.layers.0.0, ffn.layers.1},
# stages.{i}.downsample.{norm (4C), reduction} at the END of stage i in nn.Unfold channel order,
# and the final norm as norm3. Written with the ``backbone.`` prefix mmdet's loader requires.
_V1_TABLE = r'\.relative_position_bias_table$'
_V1_BLOCK_TAIL = ((r'\.mlp\.fc1\.', '.ffn.layers.0.0.'),
                  (r'\.mlp\.fc2\.', '.ffn.layers.1.'),
                  (r'^norm\.', 'norm3.'))
_V1_MERGE_TO_UNFOLD = ((r'^stages\.\d+\.downsample\.(reduction\.weight|norm\.weight|norm\.bias)$',
                        _same_key(official_to_unfold_order)),)

SWIN_V1_OFFICIAL = Layout(
    name='swin_v1_official',
    description='Swin V1, microsoft/Swin-Transformer .pth',
    signature=(r'^layers\.0\.downsample\.reduction\.weight$', r'^layers\.\d+.*' + _V1_TABLE),
    drop=(r'^head\.',),
    renames=((r'^patch_embed\.proj\.', 'patch_embed.projection.'),
             (r'^layers\.', 'stages.'),
             (r'\.attn\.', '.attn.w_msa.')) + _V1_BLOCK_TAIL,
    transforms=_V1_MERGE_TO_UNFOLD,
)

SWIN_V1_TIMM = Layout(
    name='swin_v1_timm',
    description='Swin V1, timm swin_* (downsample at the start of the next stage)',
    signature=(r'^layers\.1\.downsample\.reduction\.weight$', r'^layers\.\d+.*' + _V1_TABLE),
    exclude=r'^layers\.0\.downsample\.',
    drop=(r'^head\.',),
    renames=((r'^patch_embed\.proj\.', 'patch_embed.projection.'),
             (r'^layers\.(\d+)\.downsample\.', lambda m: f'stages.{int(m[1]) - 1}.downsample.'),
             (r'^layers\.', 'stages.'),
             (r'\.attn\.', '.attn.w_msa.')) + _V1_BLOCK_TAIL,
    transforms=_V1_MERGE_TO_UNFOLD,
)

SWIN_V1_HF = Layout(
    name='swin_v1_hf',
    description='Swin V1, HF transformers SwinModel / SwinForImageClassification '
                '(Hub names and transformers 5 in-memory names)',
    signature=(r'^(swin\.)?encoder\.layers\.', _V1_TABLE),
    drop=(r'^classifier\.', r'(^|\.)hidden_states_norms\.'),
    renames=((r'^swin\.', ''),
             (r'^embeddings\.patch_embeddings\.projection\.', 'patch_embed.projection.'),
             (r'^embeddings\.norm\.', 'patch_embed.norm.'),
             (r'^encoder\.layers\.', 'stages.'),
             # transformers 5 in-memory names
             (r'\.attention\.([qkv])_proj\.',
              lambda m: '.attn.w_msa.' + dict(q='query', k='key', v='value')[m[1]] + '.'),
             (r'\.attention\.o_proj\.', '.attn.w_msa.proj.'),
             (r'\.attention\.relative_position_bias\.', '.attn.w_msa.'),
             # Hub (transformers 4) names
             (r'\.attention\.self\.', '.attn.w_msa.'),
             (r'\.attention\.output\.dense\.', '.attn.w_msa.proj.'),
             (r'\.layernorm_before\.', '.norm1.'),
             (r'\.layernorm_after\.', '.norm2.'),
             (r'\.intermediate\.dense\.', '.ffn.layers.0.0.'),
             (r'\.output\.dense\.', '.ffn.layers.1.'),
             (r'^layernorm\.', 'norm3.')) + _V1_BLOCK_TAIL[:2],
    fuse_qkv=('query', 'key', 'value', 'qkv'),
    transforms=_V1_MERGE_TO_UNFOLD,
)

V1_LAYOUTS: Dict[str, Layout] = {layout.name: layout for layout in (
    SWIN_V1_OFFICIAL, SWIN_V1_TIMM, SWIN_V1_HF)}


def detect_v1_layout(state_dict: Dict[str, torch.Tensor], source: str = 'checkpoint') -> Layout:
    for layout in V1_LAYOUTS.values():
        if layout.matches(state_dict):
            return layout
    raise ValueError(f'{source}: not a Swin V1 checkpoint in a known layout (official, timm, '
                     f'HF). First keys: {list(state_dict)[:8]}')


def detect_layout(state_dict: Dict[str, torch.Tensor], source: str = 'checkpoint') -> Layout:
    """The layout whose signature the keys match; a clear error if none does."""
    for layout in LAYOUTS.values():
        if layout.matches(state_dict):
            return layout
    for layout in V1_LAYOUTS.values():
        if layout.matches(state_dict):
            raise ValueError(
                f'{source}: a Swin V1 checkpoint ({layout.description}); SwinV2 cannot use it. '
                f'Convert it for mmdet\'s / mmseg\'s SwinTransformer with '
                f'tools/convert_checkpoint.py SRC DST --format swin_v1')
    raise ValueError(
        f'{source}: unknown weight layout. First keys: {list(state_dict)[:8]}. Known formats: '
        + '; '.join(f'{name} ({layout.description})' for name, layout in LAYOUTS.items()))


# ---- Export: ours -> other layouts (for mmpretrain / timm users, and round-trip checks) ------
EXPORTS: Dict[str, Layout] = {
    'mmpretrain': Layout(
        name='mmpretrain',
        description='mmpretrain SwinTransformerV2 backbone inside an ImageClassifier',
        renames=((r'^patch_embed\.proj\.', 'patch_embed.projection.'),
                 (r'\.attn\.', '.attn.w_msa.'),
                 (r'\.mlp\.fc1\.', '.ffn.layers.0.0.'),
                 (r'\.mlp\.fc2\.', '.ffn.layers.1.'),
                 (r'^', 'backbone.')),
        transforms=((r'^backbone\.stages\.\d+\.downsample\.reduction\.weight$',
                     _same_key(official_to_unfold_order)),)),
    'timm': Layout(
        name='timm',
        description='timm swinv2_* (features; no head)',
        drop=(r'^norm[0-2]\.',),
        renames=((r'^stages\.', 'layers.'), (r'^norm3\.', 'norm.'))),
}


def export_state_dict(state_dict: Dict[str, torch.Tensor], target: str) -> Dict[str, torch.Tensor]:
    """Our canonical state dict in another implementation's layout (``EXPORTS``)."""
    if target not in EXPORTS:
        raise ValueError(f'unknown export target {target!r}; known: {sorted(EXPORTS)}')
    return EXPORTS[target].convert(state_dict)


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
