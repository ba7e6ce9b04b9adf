"""Swin Transformer V2 backbone for dense prediction (MMDetection / MMSegmentation)."""
import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule
from mmengine.model.weight_init import trunc_normal_

from ..registry import MODELS
from ..variants import arch_settings, check_int, check_out_indices, is_number, per_stage
from .blocks import SwinStageV2


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch_size`` convolution + LayerNorm; NCHW image -> NHWC tokens.
    The image is zero-padded at the bottom and right to a multiple of ``patch_size``."""

    def __init__(self, in_channels: int, embed_dims: int, patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, embed_dims, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad_h, pad_w = -x.shape[2] % self.patch_size, -x.shape[3] % self.patch_size
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


@MODELS.register_module()
class SwinTransformerV2(BaseModule):
    """Swin Transformer V2 backbone: a multi-scale NCHW feature pyramid for FPN / UPerHead.

    Numerically the official SwinV2 (microsoft/Swin-Transformer): residual post-norm blocks,
    scaled cosine attention with a per-head logit scale clamped at ln(100), q/v biases and no k
    bias, log-spaced continuous position bias, shifted windows with a -100 mask, and V2 patch
    merging (reduce, then LayerNorm). Any input size is accepted.

    **Output sizes.** For an ``(N, C_in, H, W)`` input, stage ``i`` returns
    ``(N, embed_dims * 2**i, H_i, W_i)`` with ``H_0 = ceil(H / patch_size)`` and
    ``H_{i+1} = ceil(H_i / 2)`` (likewise W). Odd maps are zero-padded by one row/column before
    merging; each block pads to whole windows and crops back. Each returned map passes through
    its own LayerNorm ``norm{i}`` and is taken before the next stage's downsampling.

    **Small maps.** An axis no longer than ``window_size`` is one window of the map's own length
    and is not shifted (the official rule, per axis); longer axes use ``window_size`` and, in
    odd blocks, a shift of ``window_size // 2``.

    **CPU inference.** In eval mode on the CPU (``cpu_inference=True``), ``eval()`` hands the
    blocks to :func:`mmswinv2.cpu.optimize_for_cpu_inference` (same parameters, same outputs up
    to rounding, faster) and ``train()`` gives them back.

    Args:
        arch: 'tiny', 'small', 'base', 'large', 'huge', 'giant' (or 't' ... 'g'), or a dict with
            ``embed_dims``, ``depths``, ``num_heads`` (and ``extra_norm_every_n_blocks``).
        patch_size: side of the square patches of the stem.
        in_channels: image channels.
        window_size: attention window, one int for all stages or one per stage.
        pretrained_window_sizes: window each stage's position-bias MLP was pretrained with, one
            per stage (an int for all); 0 means "same as window_size", e.g. (12, 12, 12, 6) for
            the 22K 192 px checkpoints. None (default): taken from the checkpoint that
            ``init_cfg`` loads when it records them (official / SimMIM / mmpretrain buffers, an
            HF ``config.json``, tools/convert_checkpoint.py's meta), else 0. A value set here
            wins; a checkpoint that contradicts it gets a warning naming both.
        mlp_ratio: MLP hidden width / embed dims.
        qkv_bias: learn q and v biases.
        drop_rate: dropout after projections and MLP layers.
        attn_drop_rate: dropout on attention weights.
        drop_path_rate: stochastic depth, increasing linearly from 0 over all blocks.
        out_indices: stages whose outputs are returned, in order.
        frozen_stages: freeze the patch embedding (0) and also stages ``0..k-1`` with their
            output norms (k >= 1): no gradients, eval mode. -1 freezes nothing (mmdet's rule).
        norm_eval: keep normalisation layers in eval mode while training (accepted for configs
            written for other backbones; LayerNorms do not depend on the mode).
        with_cp: activation checkpointing per block while training.
        attn_chunk_windows: attend at most this many windows at a time (the paper's sequential
            self-attention): bounds the ``windows x heads x N^2`` logits of a block at
            1536-2048 px, same result. 0 (default): all windows at once.
        fused_attention: ``'auto'`` (default: fused on CUDA), True or False: the attention in
            ``F.scaled_dot_product_attention`` or in the official explicit order.
        cpu_inference: in eval mode on the CPU, run through :mod:`mmswinv2.cpu` (see above).
        extra_norm_every_n_blocks: a main-branch LayerNorm ``norm3`` after every n-th block of
            each stage; None: the arch's (6 for huge and giant, else 0).
        stage_end_norms: stages whose last block is followed by a main-branch LayerNorm.

    Options that reproduce timm's ``swinv2_cr`` (a different network;
    :data:`mmswinv2.variants.TIMM_CR_SETTINGS` plus ``window_size=7`` and
    ``stage_end_norms=(3,)``, ``(0, 1, 2, 3)`` for the ``_ns`` models):

        learnable_k_bias: learn a k bias in the qkv projection.
        cpb_hidden_dims: hidden width of the position-bias MLP (official 512, cr 384).
        cpb_output_bias: the position-bias MLP's output layer has a bias.
        cpb_bounded: bound the position bias to ``16 * sigmoid`` (cr: unbounded).
        cpb_coords: ``'normalized_log2'`` (official) or ``'log'`` (cr).
        merge_norm_first: patch merging normalises the 4C concatenation before reducing it.
        init_cfg: mmengine init config, e.g. ``dict(type='Pretrained', checkpoint=PATH)``.
    """

    def __init__(self,
                 arch: Union[str, dict] = 'tiny',
                 patch_size: int = 4,
                 in_channels: int = 3,
                 window_size: Union[int, Sequence[int]] = 8,
                 pretrained_window_sizes: Optional[Union[int, Sequence[int]]] = None,
                 mlp_ratio: float = 4.,
                 qkv_bias: bool = True,
                 drop_rate: float = 0.,
                 attn_drop_rate: float = 0.,
                 drop_path_rate: float = 0.1,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 attn_chunk_windows: int = 0,
                 fused_attention: Union[bool, str] = 'auto',
                 cpu_inference: bool = True,
                 extra_norm_every_n_blocks: Optional[int] = None,
                 stage_end_norms: Sequence[int] = (),
                 learnable_k_bias: bool = False,
                 cpb_hidden_dims: int = 512,
                 cpb_output_bias: bool = False,
                 cpb_bounded: bool = True,
                 cpb_coords: str = 'normalized_log2',
                 merge_norm_first: bool = False,
                 init_cfg: Optional[Union[dict, List[dict]]] = None):
        super().__init__(init_cfg=init_cfg)
        settings = arch_settings(arch)
        self.embed_dims = settings['embed_dims']
        self.depths = settings['depths']
        self.num_heads = settings['num_heads']
        num_stages = len(self.depths)
        self.window_sizes = per_stage('window_size', window_size, num_stages, minimum=1)
        #: False while ``pretrained_window_sizes`` is None: a checkpoint may then set them.
        self.pretrained_window_sizes_set = pretrained_window_sizes is not None
        pretrained = per_stage('pretrained_window_sizes',
                               0 if pretrained_window_sizes is None else pretrained_window_sizes,
                               num_stages, minimum=0)
        # A buffer, so that a whole trained model's checkpoint (load_from, tools/test.py) brings
        # back the windows that loading the pretrained checkpoint adopted when training began.
        self.register_buffer('pretrained_windows', torch.tensor(pretrained, dtype=torch.int64))
        self.out_indices = check_out_indices(out_indices, num_stages)
        self.stage_end_norms = check_out_indices(stage_end_norms, num_stages, 'stage_end_norms')
        check_int('patch_size', patch_size, minimum=1)
        check_int('in_channels', in_channels, minimum=1)
        check_int('frozen_stages', frozen_stages, minimum=-1, maximum=num_stages)
        check_int('cpb_hidden_dims', cpb_hidden_dims, minimum=1)
        check_int('attn_chunk_windows', attn_chunk_windows, minimum=0)
        if extra_norm_every_n_blocks is None:
            extra_norm_every_n_blocks = settings['extra_norm_every_n_blocks']
        check_int('extra_norm_every_n_blocks', extra_norm_every_n_blocks, minimum=0)
        for name, rate in (('drop_rate', drop_rate), ('attn_drop_rate', attn_drop_rate),
                           ('drop_path_rate', drop_path_rate)):
            if not is_number(rate) or not 0. <= rate < 1.:
                raise ValueError(f'{name} must be a number in [0, 1), got {rate!r}')
        if not is_number(mlp_ratio) or not mlp_ratio > 0:
            raise ValueError(f'mlp_ratio must be a positive number, got {mlp_ratio!r}')
        if fused_attention != 'auto' and not isinstance(fused_attention, bool):
            raise ValueError(f"fused_attention must be 'auto', True or False, got "
                             f'{fused_attention!r}')
        for name, flag in (('qkv_bias', qkv_bias), ('norm_eval', norm_eval),
                           ('with_cp', with_cp), ('cpu_inference', cpu_inference),
                           ('learnable_k_bias', learnable_k_bias),
                           ('cpb_output_bias', cpb_output_bias), ('cpb_bounded', cpb_bounded),
                           ('merge_norm_first', merge_norm_first)):
            if not isinstance(flag, bool):
                raise ValueError(f'{name} must be True or False, got {flag!r}')
        self.in_channels = in_channels
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.cpu_inference = cpu_inference
        self.num_features = [self.embed_dims * 2**i for i in range(num_stages)]
        for i, (dims, heads) in enumerate(zip(self.num_features, self.num_heads)):
            if dims % heads:
                raise ValueError(f'stage {i} has {dims} channels, not divisible by '
                                 f'num_heads[{i}]={heads}')
        #: The options that change which weights exist (checked when loading checkpoints).
        self.variant_options = dict(
            learnable_k_bias=learnable_k_bias, cpb_hidden_dims=cpb_hidden_dims,
            cpb_output_bias=cpb_output_bias, cpb_bounded=cpb_bounded, cpb_coords=cpb_coords,
            merge_norm_first=merge_norm_first)
        attn_cfg = dict(fused=fused_attention, chunk_windows=attn_chunk_windows,
                        learnable_k_bias=learnable_k_bias, cpb_hidden=cpb_hidden_dims,
                        cpb_output_bias=cpb_output_bias, cpb_bounded=cpb_bounded,
                        cpb_coords=cpb_coords)

        self.patch_embed = PatchEmbed(in_channels, self.embed_dims, patch_size)
        self.drop_after_pos = nn.Dropout(drop_rate)
        rates = torch.linspace(0, drop_path_rate, sum(self.depths)).tolist()
        self.stages = nn.ModuleList()
        for i, depth in enumerate(self.depths):
            first = sum(self.depths[:i])
            extra_norms = [(extra_norm_every_n_blocks > 0
                            and (j + 1) % extra_norm_every_n_blocks == 0)
                           or (i in self.stage_end_norms and j == depth - 1)
                           for j in range(depth)]
            self.stages.append(SwinStageV2(
                dim=self.num_features[i], depth=depth, num_heads=self.num_heads[i],
                window_size=self.window_sizes[i], pretrained_window_size=pretrained[i],
                downsample=i > 0, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop=drop_rate,
                attn_drop=attn_drop_rate, drop_path=rates[first:first + depth],
                with_cp=with_cp, extra_norms=extra_norms, merge_norm_first=merge_norm_first,
                attn_cfg=attn_cfg))
        for i in self.out_indices:
            self.add_module(f'norm{i}', nn.LayerNorm(self.num_features[i]))
        self._freeze_stages()

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f'{type(self).__name__} expects images of shape (N, '
                             f'{self.in_channels}, H, W), got {tuple(x.shape)}')
        x = self.drop_after_pos(self.patch_embed(x))
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_indices:
                outs.append(getattr(self, f'norm{i}')(x).permute(0, 3, 1, 2).contiguous())
        return tuple(outs)

    @property
    def pretrained_window_sizes(self) -> Tuple[int, ...]:
        """The window each stage's position bias was pretrained with (0: its own window)."""
        return tuple(self.pretrained_windows.tolist())

    def set_pretrained_window_sizes(self, sizes: Sequence[int]) -> None:
        """Evaluate each stage's position bias as pretrained with ``sizes`` (one per stage)."""
        sizes = per_stage('pretrained_window_sizes', sizes, len(self.stages), minimum=0)
        with torch.no_grad():
            self.pretrained_windows.copy_(torch.tensor(sizes))
        self._use_pretrained_windows()

    def _use_pretrained_windows(self) -> None:
        for stage, size in zip(self.stages, self.pretrained_window_sizes):
            for block in stage.blocks:
                block.attn.pretrained_window_size = size

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # torch's and mmengine's loaders both call this: the loaded buffer reaches the blocks
        # whichever loaded it. Weights without it (converted checkpoints) keep the model's own
        # setting and load strictly all the same.
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        key = prefix + 'pretrained_windows'
        if key not in state_dict and key in missing_keys:
            missing_keys.remove(key)
        self._use_pretrained_windows()

    def init_weights(self) -> None:
        """Official SwinV2 initialisation, or the checkpoint named by ``init_cfg``.

        ``init_cfg=dict(type='Pretrained', checkpoint=PATH)`` accepts every supported layout
        (official, HF folder or file, timm, mmpretrain, SimMIM, whole mmdet/mmseg checkpoints,
        ours), detected from the keys (or forced with ``format='timm'`` etc.) and loaded strictly;
        see :func:`mmswinv2.checkpoints.load_pretrained`. A ``prefix`` is not needed.
        """
        cfg = self.init_cfg
        if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained':
            from mmengine.logging import MMLogger

            from ..checkpoints import load_pretrained
            if not cfg.get('checkpoint'):
                raise ValueError(f'init_cfg {cfg} needs checkpoint=PATH')
            load_pretrained(self, cfg['checkpoint'], layout=cfg.get('format', 'auto'),
                            logger=MMLogger.get_current_instance())
            self._is_init = True
            return
        if cfg is not None:
            super().init_weights()
            return
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for stage in self.stages:
            for block in stage.blocks:
                # residual post-norm: each block starts as the identity
                for norm in (block.norm1, block.norm2):
                    nn.init.zeros_(norm.weight)
                    nn.init.zeros_(norm.bias)
                nn.init.constant_(block.attn.logit_scale, math.log(10.0))

    def train(self, mode: bool = True) -> 'SwinTransformerV2':
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)):
                    m.eval()
        if self.cpu_inference:
            # the one seam between the model and mmswinv2.cpu (see the class docstring)
            from ..cpu import use_cpu_inference
            use_cpu_inference(self, enabled=not mode)
        return self

    def _freeze_stages(self) -> None:
        if self.frozen_stages < 0:
            return
        frozen = [self.patch_embed, self.drop_after_pos]
        for i in range(self.frozen_stages):
            frozen.append(self.stages[i])
            if i in self.out_indices:
                frozen.append(getattr(self, f'norm{i}'))
        for module in frozen:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False
