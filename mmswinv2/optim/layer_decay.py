"""Layer-wise learning-rate decay for SwinV2 (the official Swin rule), as an MMEngine optimizer
wrapper constructor.

The official rule (microsoft/Swin-Transformer ``optimizer.py``, ``get_swin_layer``), on our
layout: with ``num_layers = sum(depths)``,

- the patch embedding is layer 0;
- block ``j`` of stage ``i`` is layer ``sum(depths[:i]) + j + 1``;
- the patch merging that starts stage ``i`` (ours; the official code puts it at the end of
  stage ``i - 1``) is layer ``sum(depths[:i])``: the layer of stage ``i - 1``'s last block;
- everything else (output norms, neck, heads) is layer ``num_layers + 1``;

and a parameter of layer ``l`` gets ``lr * decay_rate ** (num_layers + 1 - l)``. Weight decay
and every other ``paramwise_cfg`` rule (SwinV2's ``flat_decay_mult=0`` and ``custom_keys``
for ``cpb_mlp`` / ``logit_scale``) apply as in MMEngine's default constructor; the layer scale
multiplies the learning rate they set.
"""
import re
from typing import List, Optional

import torch.nn as nn
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor

from ..models import SwinTransformerV2
from ..registry import OPTIM_WRAPPER_CONSTRUCTORS

_BLOCK = re.compile(r'(?:^|\.)backbone\.stages\.(\d+)\.blocks\.(\d+)\.')
_MERGE = re.compile(r'(?:^|\.)backbone\.stages\.(\d+)\.downsample\.')
_STEM = re.compile(r'(?:^|\.)backbone\.(patch_embed|absolute_pos_embed|mask_token)\b')


def swin_layer_id(name: str, depths: List[int], merge_starts_stage: bool = True) -> int:
    """The official layer of parameter ``name`` (``backbone.``-prefixed, as in a detector or
    segmentor) for a backbone with ``depths`` blocks per stage. ``merge_starts_stage``: the
    patch merging ``stages.i.downsample`` starts stage ``i`` (mmswinv2) rather than ending it
    (the official code, mmdet's / mmseg's Swin V1)."""
    if _STEM.search(name):
        return 0
    block = _BLOCK.search(name)
    if block:
        stage, index = int(block[1]), int(block[2])
        return sum(depths[:stage]) + index + 1
    merge = _MERGE.search(name)
    if merge:  # with the last block before it
        stage = int(merge[1])
        return sum(depths[:stage] if merge_starts_stage else depths[:stage + 1])
    return sum(depths) + 1


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class SwinLayerDecayOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """``optim_wrapper=dict(constructor='mmswinv2.SwinLayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(layer_decay_rate=0.95, ...))`` on a detector or segmentor whose
    ``backbone`` is mmswinv2's SwinTransformerV2 or mmdet's / mmseg's (V1) SwinTransformer."""

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: Optional[dict] = None):
        paramwise_cfg = dict(paramwise_cfg or {})
        self.decay_rate = paramwise_cfg.pop('layer_decay_rate', None)
        if not isinstance(self.decay_rate, (int, float)) or not 0 < self.decay_rate <= 1:
            raise ValueError(f'paramwise_cfg.layer_decay_rate must be a number in (0, 1], got '
                             f'{self.decay_rate!r}')
        super().__init__(optim_wrapper_cfg, paramwise_cfg)
        self.depths: List[int] = []
        self.merge_starts_stage = True

    def __call__(self, model: nn.Module):
        backbone = getattr(getattr(model, 'module', model), 'backbone', None)
        stages = getattr(backbone, 'stages', None)
        if stages is None or not all(hasattr(stage, 'blocks') for stage in stages):
            raise ValueError(f'{type(self).__name__} needs a model whose backbone has Swin '
                             f'stages of blocks; got {type(backbone).__name__} in '
                             f'{type(model).__name__}')
        self.depths = [len(stage.blocks) for stage in stages]
        self.merge_starts_stage = isinstance(backbone, SwinTransformerV2)
        print_log(f'layer-wise lr decay {self.decay_rate}: {sum(self.depths) + 2} layers, '
                  f'patch embedding lr x {self.decay_rate ** (sum(self.depths) + 1):.4g}',
                  logger='current')
        return super().__call__(model)

    def add_params(self, params: List[dict], module: nn.Module, prefix: str = '',
                   is_dcn_module=None) -> None:
        start = len(params)
        super().add_params(params, module, prefix, is_dcn_module)
        # The groups of this module's own parameters (children scale theirs when recursed into).
        own = {id(p): name for name, p in module.named_parameters(recurse=False)}
        top = sum(self.depths) + 1
        for group in params[start:]:
            name = own.get(id(group['params'][0]))
            if name is not None:
                layer = swin_layer_id(f'{prefix}.{name}' if prefix else name, self.depths,
                                      self.merge_starts_stage)
                group['lr'] = group.get('lr', self.base_lr) * self.decay_rate ** (top - layer)
