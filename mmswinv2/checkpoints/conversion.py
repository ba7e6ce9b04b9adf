"""Whole-file conversion and window transfer, shared by tools/convert_checkpoint.py and
tools/transfer_checkpoint.py.

:func:`convert_file` reads any supported checkpoint and returns its backbone weights in the
target layout with a ``meta`` record: SwinV2 sources go to our canonical layout, Swin V1 sources
to the layout of mmdet's / mmseg's own ``SwinTransformer`` (``backbone.``-prefixed).
:func:`transfer_windows` then moves a converted checkpoint to new attention windows:

- SwinV2 weights do not change (the position bias is an MLP of the offsets); what must travel
  is the window each stage's position bias was *trained* with, which the loader needs to
  normalise the offsets (``pretrained_window_sizes``). It is recorded in ``meta``.
- Swin V1 bias tables are resized bicubically to the new window, exactly as mmdet's
  ``SwinTransformer.init_weights`` does when it loads a table of another size.
"""
import math
import os
import tempfile
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..variants import window_and_shift
from ..version import __version__
from .arch import infer_swin_v1_arch, pretraining_windows
from .formats import LAYOUTS, V1_LAYOUTS, detect_v1_layout
from .io import Checkpoint, CheckpointError, read_checkpoint
from .loading import backbone_weights, recorded_windows

#: ``--format`` choices of the tools: detect, a SwinV2 layout, or Swin V1 (detected among its own).
FORMATS = ['auto', *LAYOUTS, 'swin_v1']
#: What Swin V1 conversions are written for.
V1_TARGET = 'mmdet / mmseg SwinTransformer (convert_weights=False)'
#: Prefix mmdet's / mmseg's SwinTransformer.init_weights keeps (and strips) when loading.
V1_PREFIX = 'backbone.'


@dataclass
class Converted:
    """A converted checkpoint: what is written (``state_dict`` and ``meta``) and what was left."""
    state_dict: Dict[str, torch.Tensor]
    meta: dict
    #: Source keys not carried over, by reason (see :meth:`.formats.Layout.dropped`).
    dropped: Dict[str, list]

    @property
    def is_swin_v1(self) -> bool:
        return self.meta.get('target') == V1_TARGET

    @property
    def parameters(self) -> int:
        return sum(v.numel() for v in self.state_dict.values())


def convert_file(src: str, fmt: str = 'auto') -> Converted:
    """Read ``src`` (any layout, or ``fmt``; ``'swin_v1'`` forces Swin V1) and convert it."""
    ckpt = read_checkpoint(src)
    is_v1 = fmt == 'swin_v1' or (
        fmt == 'auto' and any(v1.matches(ckpt.state_dict) for v1 in V1_LAYOUTS.values()))
    return _convert_swin_v1(ckpt) if is_v1 else _convert_swin_v2(ckpt, fmt)


def _convert_swin_v2(ckpt: Checkpoint, fmt: str) -> Converted:
    ckpt, layout, state_dict, arch = backbone_weights(ckpt, fmt)
    windows = recorded_windows(ckpt, layout)
    options = dict(layout.required_options)
    if arch['stage_end_norms']:
        options['stage_end_norms'] = tuple(arch['stage_end_norms'])
    meta = dict(source=os.path.abspath(ckpt.path), source_format=layout.name, arch=arch,
                backbone_options=options,
                window_sizes=windows and windows['window_sizes'],
                pretrained_window_sizes=windows and windows['pretrained_window_sizes'],
                pretraining_windows=windows and pretraining_windows(windows),
                mmswinv2_version=__version__)
    return Converted(state_dict, meta, layout.dropped(ckpt.state_dict))


def _convert_swin_v1(ckpt: Checkpoint) -> Converted:
    try:
        layout = detect_v1_layout(ckpt.state_dict, ckpt.path)
    except ValueError as err:
        raise CheckpointError(str(err)) from None
    state_dict = layout.convert(ckpt.state_dict)
    try:
        arch = infer_swin_v1_arch(state_dict)
    except (KeyError, IndexError) as err:
        raise CheckpointError(f'{ckpt.path}: read as {layout.name} but {err} is missing') from None
    meta = dict(source=os.path.abspath(ckpt.path), source_format=layout.name, arch=arch,
                window_sizes=[arch['window_size']] * len(arch['depths']),
                pretrained_window_sizes=None, pretraining_windows=None,
                mmswinv2_version=__version__, target=V1_TARGET)
    return Converted({V1_PREFIX + k: v for k, v in state_dict.items()}, meta,
                     layout.dropped(ckpt.state_dict))


def save_atomically(converted: Converted, src: str, dst: str) -> None:
    """Write ``{'state_dict', 'meta'}`` to ``dst``: a temporary file in the same folder, renamed
    over ``dst`` once complete, so ``dst`` is never half-written; never the source itself."""
    if os.path.abspath(src) == os.path.abspath(dst):
        raise CheckpointError(f'{dst}: refusing to overwrite the source checkpoint')
    folder = os.path.dirname(os.path.abspath(dst))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.converting-', suffix='.pth', dir=folder)
    os.close(fd)
    try:
        torch.save({'state_dict': converted.state_dict, 'meta': converted.meta}, tmp)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# ---- window transfer ----------------------------------------------------------------------

def per_stage_windows(name: str, values: Sequence[int], num_stages: int) -> List[int]:
    """One window per stage from one value (all stages) or one per stage; positive ints."""
    values = list(values)
    if len(values) == 1:
        values = values * num_stages
    if len(values) != num_stages:
        raise ValueError(f'{name}: give one window for all stages or one per stage '
                         f'({num_stages}), got {len(values)}: {values}')
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f'{name}: windows must be positive integers, got {values}')
    return values


def transfer_windows(converted: Converted, window_sizes: Sequence[int],
                     pretrained_window_sizes: Optional[Sequence[int]] = None,
                     img_size: Optional[Tuple[int, int]] = None) -> List[str]:
    """Move ``converted`` to new windows in place; return warnings for the user.

    SwinV2: records ``window_sizes`` and the windows the position bias was trained with in the
    meta. Those come from the checkpoint; ``pretrained_window_sizes`` supplies them when it
    records none (timm, plain state dicts) and overrides them (with a warning) when it does.
    Swin V1: one window for all stages (mmdet's ``window_size``); every
    ``relative_position_bias_table`` is resized as mmdet does, and an absolute position
    embedding is resized to ``img_size``'s patch grid.
    """
    if converted.is_swin_v1:
        return _transfer_swin_v1(converted, window_sizes, img_size)
    meta = converted.meta
    num_stages = len(meta['arch']['depths'])
    windows = per_stage_windows('--window-size', window_sizes, num_stages)
    recorded = meta['pretraining_windows']
    warnings = []
    if pretrained_window_sizes is not None:
        trained = per_stage_windows('--pretrained-window-sizes', pretrained_window_sizes,
                                    num_stages)
        if recorded is not None and recorded != trained:
            warnings.append(f'{meta["source"]} records that its position bias was trained with '
                            f'windows {recorded}; --pretrained-window-sizes {trained} wins')
    elif recorded is not None:
        trained = list(recorded)
    else:
        raise CheckpointError(
            f'{meta["source"]} ({meta["source_format"]} layout) does not record the windows it '
            f'was pretrained with: pass --pretrained-window-sizes (8 for *_window8_256, '
            f'16 for *_window16_256, 12 12 12 6 for the 22K 192 px checkpoints)')
    meta.update(transferred_from=dict(window_sizes=meta['window_sizes'],
                                      pretraining_windows=recorded),
                window_sizes=windows, pretrained_window_sizes=trained,
                pretraining_windows=trained)
    return warnings


def backbone_fragment(meta: dict) -> str:
    """The backbone settings of a transferred SwinV2 checkpoint, to paste into a config."""
    def compact(values):
        return str(values[0]) if len(set(values)) == 1 else str(tuple(values))
    return (f'window_size={compact(meta["window_sizes"])}, '
            f'pretrained_window_sizes={tuple(meta["pretrained_window_sizes"])}')


def stage_plan(img_size: Tuple[int, int], patch_size: int,
               window_sizes: Sequence[int]) -> List[dict]:
    """Per stage, for an ``img_size`` (H, W) input: the map size, and the window and shift its
    blocks use (the window is clipped per axis to a smaller map, which is then not shifted)."""
    hw = (math.ceil(img_size[0] / patch_size), math.ceil(img_size[1] / patch_size))
    plan = []
    for i, window in enumerate(window_sizes):
        if i:
            hw = (math.ceil(hw[0] / 2), math.ceil(hw[1] / 2))
        used, shift = window_and_shift(hw, window, shifted=True)
        plan.append(dict(stage=i, map=hw, window=used, shift=shift,
                         windows_per_image=math.ceil(hw[0] / used[0]) * math.ceil(hw[1] / used[1])))
    return plan


def resize_v1_table(table: torch.Tensor, window: int) -> torch.Tensor:
    """A ``((2w-1)^2, heads)`` relative position bias table resized to ``window``: bicubic
    over the ``(2w-1) x (2w-1)`` offset grid, exactly as mmdet's ``SwinTransformer.init_weights``
    resizes a pretrained table of another size."""
    rows, heads = table.shape
    side, new_side = math.isqrt(rows), 2 * window - 1
    if rows == new_side ** 2:
        return table
    resized = F.interpolate(table.permute(1, 0).reshape(1, heads, side, side),
                            size=(new_side, new_side), mode='bicubic')
    return resized.view(heads, new_side ** 2).permute(1, 0).contiguous()


def _transfer_swin_v1(converted: Converted, window_sizes: Sequence[int],
                      img_size: Optional[Tuple[int, int]]) -> List[str]:
    meta = converted.meta
    windows = per_stage_windows('--window-size', window_sizes, len(meta['arch']['depths']))
    if len(set(windows)) != 1:
        raise ValueError(f'--window-size: mmdet\'s / mmseg\'s Swin V1 uses one window for all '
                         f'stages, got {windows}')
    window = windows[0]
    warnings = []
    for key, value in converted.state_dict.items():
        if key.endswith('relative_position_bias_table'):
            converted.state_dict[key] = resize_v1_table(value, window)
        elif key.endswith('absolute_pos_embed'):
            if img_size is None:
                warnings.append(f'{key} kept at its pretraining grid: pass --img-size to resize '
                                f'it to your input size')
            else:
                converted.state_dict[key] = _resize_position_embedding(
                    value, img_size, meta['arch']['patch_size'])
    meta.update(transferred_from=dict(window_sizes=meta['window_sizes']),
                window_sizes=windows, arch=dict(meta['arch'], window_size=window))
    return warnings


def _resize_position_embedding(embed: torch.Tensor, img_size: Tuple[int, int],
                               patch_size: int) -> torch.Tensor:
    """A square ``(1, L, C)`` absolute position embedding resized bicubically to the patch grid
    of ``img_size``."""
    _, length, channels = embed.shape
    side = math.isqrt(length)
    grid = (math.ceil(img_size[0] / patch_size), math.ceil(img_size[1] / patch_size))
    resized = F.interpolate(embed.reshape(1, side, side, channels).permute(0, 3, 1, 2),
                            size=grid, mode='bicubic', align_corners=False)
    return resized.flatten(2).transpose(1, 2).contiguous()


def describe(converted: Converted) -> List[str]:
    """What a converted checkpoint holds, as the tools print it (one ``name: value`` per line)."""
    meta, dropped = converted.meta, converted.dropped
    arch = meta['arch']
    if meta['window_sizes'] is None:
        windows = ('not recorded in the file: set window_size / pretrained_window_sizes in '
                   'your config')
    elif meta['pretraining_windows'] is None:  # Swin V1: a table per window size
        windows = f"{meta['window_sizes']}"
    else:
        windows = (f"{meta['window_sizes']}, pretrained {meta['pretrained_window_sizes']} "
                   f"(position bias trained at windows {meta['pretraining_windows']})")
    layout = {**LAYOUTS, **V1_LAYOUTS}[meta['source_format']]
    lines = [f"format:      {meta['source_format']} ({layout.description})"]
    if converted.is_swin_v1:
        lines.append(f"target:      {meta['target']}")
    lines += [f"arch:        embed_dims {arch['embed_dims']}, depths {arch['depths']}, "
              f"num_heads {arch['num_heads']}, patch {arch['patch_size']}",
              f'windows:     {windows}']
    if meta.get('backbone_options'):
        lines.append('options:     the backbone needs ' + ', '.join(
            f'{k}={v!r}' for k, v in meta['backbone_options'].items()))
    lines += [f'parameters:  {converted.parameters / 1e6:.2f} M',
              f"dropped:     {len(dropped['regenerable_buffers'])} regenerable buffers, "
              f"{len(dropped['heads'])} head tensors, {len(dropped['outside_backbone'])} "
              f"non-backbone tensors"]
    return lines
