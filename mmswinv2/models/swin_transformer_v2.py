"""Swin Transformer V2 backbone for dense prediction (MMDetection / MMSegmentation)."""
import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule
from mmengine.model.weight_init import trunc_normal_

from ..registry import MODELS
from . import onednn
from .attention import auto_fused, spans
from .blocks import SwinStageV2
from .lean_autograd import eager_cpu_inference
from .streams import STREAMS, run_in_streams, stream_parts

#: Published SwinV2 sizes (embed dims, blocks per stage, heads per stage).
ARCH_SETTINGS: Dict[str, dict] = {
    'tiny': dict(embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    'small': dict(embed_dims=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    'base': dict(embed_dims=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
    'large': dict(embed_dims=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48)),
}
ARCH_ALIASES = {'t': 'tiny', 's': 'small', 'b': 'base', 'l': 'large'}

#: Backbone options that make the network timm's ``swinv2_cr`` (besides windows and stage norms).
TIMM_CR_SETTINGS = dict(learnable_k_bias=True, cpb_hidden_dims=384, cpb_output_bias=True,
                        cpb_bounded=False, cpb_coords='log', merge_norm_first=True)


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch_size`` convolution + LayerNorm; NCHW image -> NHWC tokens.
    The image is zero-padded at the bottom/right to a multiple of ``patch_size``."""

    def __init__(self, in_channels: int, embed_dims: int, patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, embed_dims, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad_h = -x.shape[2] % self.patch_size
        pad_w = -x.shape[3] % self.patch_size
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        if x.device.type == 'cpu':
            # A channels-last image makes the convolution's output channels-last too, so the
            # tokens need no transposing copy (AMD EPYC, 800x1344: 17 -> 12 ms in fp32). Not on
            # CUDA: there cuDNN runs a channels-last fp32 convolution in TF32 (PyTorch's default
            # cudnn.allow_tf32), 3e-4 relative error that the cosine attention's logit scales
            # amplify to 1e-2 at the stage outputs (H200, measured); in NCHW it stays fp32.
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.proj(x)
        return self.norm(x.permute(0, 2, 3, 1))


@MODELS.register_module()
class SwinTransformerV2(BaseModule):
    """Swin Transformer V2 backbone: a multi-scale NCHW feature pyramid for FPN / UPerHead.

    Numerically the official SwinV2 (microsoft/Swin-Transformer): residual post-norm blocks,
    scaled cosine attention with a per-head logit scale clamped at ln(100), q/v biases and no k
    bias, log-spaced continuous position bias, shifted windows with a -100 mask, and V2 patch
    merging (reduce, then LayerNorm). Any input size is accepted.

    **Output sizes.** For an ``(N, C_in, H, W)`` input, stage ``i`` (0-based) returns
    ``(N, embed_dims * 2**i, H_i, W_i)`` with ``H_0 = ceil(H / patch_size)`` and
    ``H_{i+1} = ceil(H_i / 2)`` (likewise for W); for ``patch_size=4`` that is
    ``H_i = ceil(H / 2**(i + 2))``. The image is zero-padded at the bottom/right to a patch
    multiple, each odd-sized map is zero-padded by one row/column before merging, and each block
    pads to a window multiple and crops back. Each returned map passes through its own LayerNorm
    ``norm{i}`` and is taken before the next stage's downsampling.

    **Small maps.** A block decides its window per forward and per axis: an axis no longer than
    ``window_size`` is covered by a single window of the map's own length and is not shifted
    (the official / HF rule — window = map size, no shift — applied per axis; identical to it
    for square maps). Longer axes use ``window_size`` and, in odd blocks, a shift of
    ``window_size // 2``. No flag is needed for maps smaller than the window.

    Args:
        arch: 'tiny', 'small', 'base', 'large' (or 't', 's', 'b', 'l'), or a dict with
            ``embed_dims``, ``depths`` and ``num_heads``.
        patch_size: side of the square patches of the stem.
        in_channels: image channels.
        window_size: attention window, one int for all stages or one per stage.
        pretrained_window_sizes: window each stage's position-bias MLP was pretrained with, one
            per stage (an int for all); 0 means "same as window_size". E.g. (12, 12, 12, 6)
            for the 22K 192 px checkpoints and their ``12to16`` / ``12to24`` fine-tunes.
            None (default): not set. Loading a checkpoint through ``init_cfg`` then adopts the
            windows it was pretrained with when it records them (official / SimMIM /
            mmpretrain position buffers, an HF ``config.json``, tools/convert_checkpoint.py's
            meta) and logs them; without such a checkpoint None behaves as 0. A value set here
            always wins; a checkpoint that contradicts it gets a warning naming both.
        mlp_ratio: MLP hidden width / embed dims.
        qkv_bias: learn q and v biases.
        drop_rate: dropout after projections and MLP layers.
        attn_drop_rate: dropout on attention weights.
        drop_path_rate: stochastic depth, increasing linearly from 0 over all blocks.
        out_indices: stages whose outputs are returned, in order.
        frozen_stages: freeze the patch embedding (0) and also stages ``0..k-1`` with their output
            norms (k >= 1): no gradients, eval mode. -1 freezes nothing. Same convention as
            mmdet's ``SwinTransformer`` and ``ResNet``.
        norm_eval: keep normalisation layers in eval mode while training (mmpretrain's option).
            SwinV2 has only LayerNorms, whose output does not depend on the mode, so this changes
            nothing numerically; it is accepted so configs written for other backbones work.
        with_cp: activation checkpointing per block while training (saves memory, costs time).
        attn_chunk_windows: attend at most this many windows per attention call, in sequence
            (the paper's "sequential self-attention computation"): bounds the transient
            attention logits, ``windows x heads x N^2`` floats per block, at 1536-2048 px; the
            result is the same. In training each chunk is recomputed in backward instead of
            keeping its attention weights. 0 (default): all windows at once. Composes with
            ``with_cp``. Memory and time: ``docs/benchmarks.md``.
        cpu_streams: CPU inference of a batch runs as up to this many forwards of parts of
            it at once, each in its own thread with a share of the intra-op threads; the
            result is the same (see :mod:`mmswinv2.models.streams` for where it applies and
            what it gains). 1: one forward of the whole batch.
        fused_attention: ``'auto'`` (default), True or False. True: the attention runs in
            ``F.scaled_dot_product_attention``; False: in the official explicit order of
            operations (``softmax(cos * scale + bias) @ v``). Both compute the logits in fp32
            and agree with the references within the parity bounds (float64: 1e-8); in fp32 the
            fused kernels round differently, which logit scales up to 100 amplify. ``'auto'``
            picks, per forward, the explicit path on CPU (where the fused kernel measured no
            faster) and the fused one on CUDA (its fused kernels), and logs the choice once
            per device type. Speed of both: ``docs/benchmarks.md``.
        extra_norm_every_n_blocks: a main-branch LayerNorm (``norm3``) after every n-th block of
            each stage (mmpretrain's option; SwinV2-H/G use 6). 0: none.
        stage_end_norms: stages whose last block is followed by a main-branch LayerNorm.

    Options that reproduce timm's ``swinv2_cr`` variant (a different network; the defaults are
    the official SwinV2). ``tools/convert_checkpoint.py`` prints what a cr checkpoint needs;
    for ``swinv2_cr_*_224`` they are :data:`TIMM_CR_SETTINGS` plus ``window_size=7`` and
    ``stage_end_norms=(3,)`` (``(0, 1, 2, 3)`` for the ``_ns`` models):

        learnable_k_bias: learn a k bias in the qkv projection.
        cpb_hidden_dims: hidden width of the position-bias MLP (official 512, cr 384).
        cpb_output_bias: the position-bias MLP's output layer has a bias.
        cpb_bounded: bound the position bias to ``16 * sigmoid`` (cr: unbounded).
        cpb_coords: ``'normalized_log2'`` (official) or ``'log'``: ``sign * ln(1 + |d|)``,
            not normalised by the window (cr). See :mod:`mmswinv2.models.position_bias`.
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
                 fused_attention: Union[bool, str] = 'auto',
                 attn_chunk_windows: int = 0,
                 cpu_streams: int = STREAMS,
                 learnable_k_bias: bool = False,
                 cpb_hidden_dims: int = 512,
                 cpb_output_bias: bool = False,
                 cpb_bounded: bool = True,
                 cpb_coords: str = 'normalized_log2',
                 merge_norm_first: bool = False,
                 extra_norm_every_n_blocks: int = 0,
                 stage_end_norms: Sequence[int] = (),
                 init_cfg: Optional[Union[dict, List[dict]]] = None):
        super().__init__(init_cfg=init_cfg)
        settings = arch_settings(arch)
        self.embed_dims = settings['embed_dims']
        self.depths = settings['depths']
        self.num_heads = settings['num_heads']
        num_stages = len(self.depths)
        self.window_sizes = _per_stage('window_size', window_size, num_stages, minimum=1)
        #: False while ``pretrained_window_sizes`` is None: a checkpoint may then set them.
        self.pretrained_window_sizes_set = pretrained_window_sizes is not None
        pretrained = _per_stage(
            'pretrained_window_sizes',
            0 if pretrained_window_sizes is None else pretrained_window_sizes, num_stages,
            minimum=0)
        # A buffer, so that a whole trained model's checkpoint (load_from, tools/test.py) brings
        # back the windows that loading the pretrained checkpoint adopted when training began.
        self.register_buffer('pretrained_windows', torch.tensor(pretrained, dtype=torch.int64))
        self.out_indices = _check_out_indices(out_indices, num_stages)
        _check_int('patch_size', patch_size, minimum=1)
        _check_int('in_channels', in_channels, minimum=1)
        _check_int('frozen_stages', frozen_stages, minimum=-1, maximum=num_stages)
        for name, rate in (('drop_rate', drop_rate), ('attn_drop_rate', attn_drop_rate),
                           ('drop_path_rate', drop_path_rate)):
            if not _is_number(rate) or not 0. <= rate < 1.:
                raise ValueError(f'{name} must be a number in [0, 1), got {rate!r}')
        if not _is_number(mlp_ratio) or not mlp_ratio > 0:
            raise ValueError(f'mlp_ratio must be a positive number, got {mlp_ratio!r}')
        _check_int('cpb_hidden_dims', cpb_hidden_dims, minimum=1)
        _check_int('attn_chunk_windows', attn_chunk_windows, minimum=0)
        _check_int('cpu_streams', cpu_streams, minimum=1)
        self.cpu_streams = cpu_streams
        if fused_attention != 'auto' and not isinstance(fused_attention, bool):
            raise ValueError(f"fused_attention must be 'auto', True or False, got "
                             f'{fused_attention!r}')
        self.fused_attention = fused_attention
        for name, flag in (('qkv_bias', qkv_bias), ('norm_eval', norm_eval),
                           ('with_cp', with_cp),
                           ('learnable_k_bias', learnable_k_bias),
                           ('cpb_output_bias', cpb_output_bias), ('cpb_bounded', cpb_bounded),
                           ('merge_norm_first', merge_norm_first)):
            if not isinstance(flag, bool):
                raise ValueError(f'{name} must be True or False, got {flag!r}')
        self.in_channels = in_channels
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.num_features = [self.embed_dims * 2**i for i in range(num_stages)]
        for i, (dims, heads) in enumerate(zip(self.num_features, self.num_heads)):
            if dims % heads:
                raise ValueError(f'stage {i} has {dims} channels, not divisible by '
                                 f'num_heads[{i}]={heads}')

        _check_int('extra_norm_every_n_blocks', extra_norm_every_n_blocks, minimum=0)
        self.stage_end_norms = _check_out_indices(stage_end_norms, num_stages, 'stage_end_norms')
        #: The options that change which weights exist (checked when loading checkpoints).
        self.variant_options = dict(
            learnable_k_bias=learnable_k_bias, cpb_hidden_dims=cpb_hidden_dims,
            cpb_output_bias=cpb_output_bias, cpb_bounded=cpb_bounded, cpb_coords=cpb_coords,
            merge_norm_first=merge_norm_first)
        attn_cfg = dict(fused=fused_attention, chunk_windows=attn_chunk_windows,
                        learnable_k_bias=learnable_k_bias,
                        cpb_hidden=cpb_hidden_dims, cpb_output_bias=cpb_output_bias,
                        cpb_bounded=cpb_bounded, cpb_coords=cpb_coords)

        self.patch_embed = PatchEmbed(in_channels, self.embed_dims, patch_size)
        self.drop_after_pos = nn.Dropout(drop_rate)
        rates = torch.linspace(0, drop_path_rate, sum(self.depths)).tolist()
        self.stages = nn.ModuleList()
        for i, depth in enumerate(self.depths):
            first = sum(self.depths[:i])
            extra_norms = [bool(extra_norm_every_n_blocks) and (j + 1) % extra_norm_every_n_blocks
                           == 0 or (i in self.stage_end_norms and j == depth - 1)
                           for j in range(depth)]
            self.stages.append(SwinStageV2(
                dim=self.num_features[i], depth=depth, num_heads=self.num_heads[i],
                window_size=self.window_sizes[i],
                pretrained_window_size=pretrained[i],
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
        if self.fused_attention == 'auto' and not torch.compiler.is_compiling():
            _log_attention_choice(x.device.type)
        parts = stream_parts(self, x, self.cpu_streams)
        if parts is not None:
            return run_in_streams(self._forward, x, parts)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        x = self.drop_after_pos(self.patch_embed(x))
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_indices:
                outs.append(norm_to_nchw(x, getattr(self, f'norm{i}')))
        return tuple(outs)

    @property
    def pretrained_window_sizes(self) -> Tuple[int, ...]:
        """The window each stage's position bias was pretrained with (0: its own window)."""
        return tuple(self.pretrained_windows.tolist())

    def set_pretrained_window_sizes(self, sizes: Sequence[int]) -> None:
        """Evaluate each stage's position bias as pretrained with ``sizes`` (one per stage)."""
        sizes = _per_stage('pretrained_window_sizes', sizes, len(self.stages), minimum=0)
        with torch.no_grad():
            self.pretrained_windows.copy_(torch.tensor(sizes))
        self._use_pretrained_windows()

    def _use_pretrained_windows(self) -> None:
        for stage, size in zip(self.stages, self.pretrained_window_sizes):
            for block in stage.blocks:
                block.attn.pretrained_window_size = size

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # torch's and mmengine's loaders both call this for every module: the loaded buffer
        # reaches the blocks whichever loaded it. Weights without it (converted checkpoints,
        # other layouts) keep the model's own setting and load strictly all the same.
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
                # Residual post-norm: each block starts as the identity.
                for norm in (block.norm1, block.norm2):
                    nn.init.zeros_(norm.weight)
                    nn.init.zeros_(norm.bias)
                nn.init.constant_(block.attn.logit_scale, math.log(10.0))

    def train(self, mode: bool = True) -> 'SwinTransformerV2':
        super().train(mode)
        onednn.forget(self)  # (the attention modules drop what they reuse themselves)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)):
                    m.eval()
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


#: CPU inference normalises and transposes stage outputs in blocks of about this many bytes of
#: map (see :func:`norm_to_nchw`).
NCHW_BLOCK_BYTES = 2**20


def norm_to_nchw(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """``norm(x)`` of a ``(B, H, W, C)`` map, as a contiguous ``(B, C, H, W)`` tensor.

    In CPU inference, an image larger than two blocks of :data:`NCHW_BLOCK_BYTES` is done in
    blocks of whole rows, each normalised and transposed into the output while it is in cache.
    Done at once, the transposing copy reads the map once per channel, from memory once the
    map outgrows the cache, and the norm's map-sized output is faulted in afresh (SwinV2-T at
    800x1344, Intel Xeon, 2 threads, the four outputs timed in the forward: 38.8 -> 18.2 ms
    in fp32, 31.0 -> 16.9 ms under bf16 autocast; in blocks, maps of 1.5 MB per image, as at
    8 x 256², were no faster)."""
    B, H, W, C = x.shape
    row_bytes = W * C * x.element_size()
    if H * row_bytes <= 2 * NCHW_BLOCK_BYTES or not eager_cpu_inference(x, norm.weight):
        return norm(x).permute(0, 3, 1, 2).contiguous()
    out = None
    for image in range(B):
        for top, bottom in spans(H, max(1, NCHW_BLOCK_BYTES // row_bytes)):
            block = norm(x[image, top:bottom]).permute(2, 0, 1)  # (C, rows, W)
            if out is None:
                out = block.new_empty(B, C, H, W)
            out[image, :, top:bottom] = block
    return out


_LOGGED_ATTENTION_CHOICES = set()


def _log_attention_choice(device_type: str) -> None:
    """Say once per device type which attention ``fused_attention='auto'`` runs."""
    if device_type in _LOGGED_ATTENTION_CHOICES:
        return
    _LOGGED_ATTENTION_CHOICES.add(device_type)
    from mmengine.logging import print_log
    choice = ('F.scaled_dot_product_attention' if auto_fused(device_type) else
              'the explicit official order of operations')
    print_log(f"SwinTransformerV2 fused_attention='auto': attention on {device_type} runs in "
              f'{choice}', logger='current')


def arch_settings(arch: Union[str, dict]) -> dict:
    """``embed_dims``, ``depths`` and ``num_heads`` of an ``arch`` name or dict, checked."""
    if isinstance(arch, str):
        name = ARCH_ALIASES.get(arch.lower(), arch.lower())
        if name not in ARCH_SETTINGS:
            raise ValueError(f'unknown arch {arch!r}; expected one of {sorted(ARCH_SETTINGS)} '
                             f'(or {sorted(ARCH_ALIASES)}) or a dict with embed_dims, depths, '
                             f'num_heads')
        settings = ARCH_SETTINGS[name]
    elif isinstance(arch, dict):
        missing = {'embed_dims', 'depths', 'num_heads'} - set(arch)
        unknown = set(arch) - {'embed_dims', 'depths', 'num_heads'}
        if missing or unknown:
            raise ValueError(f'arch dict must have exactly the keys embed_dims, depths, '
                             f'num_heads; missing {sorted(missing)}, unknown {sorted(unknown)}')
        settings = arch
    else:
        raise ValueError(f'arch must be a name or a dict, got {type(arch).__name__}')
    depths = _int_sequence('arch depths', settings['depths'])
    heads = _int_sequence('arch num_heads', settings['num_heads'])
    if len(depths) != len(heads) or not depths:
        raise ValueError(f'arch depths {list(depths)} and num_heads {list(heads)} must be '
                         f'non-empty and of equal length (one per stage)')
    _check_int('arch embed_dims', settings['embed_dims'], minimum=1)
    for name, values in (('depths', depths), ('num_heads', heads)):
        for v in values:
            _check_int(f'arch {name} {list(values)}', v, minimum=1)
    return dict(embed_dims=settings['embed_dims'], depths=depths, num_heads=heads)


def _per_stage(name: str, value, num_stages: int, minimum: int) -> Tuple[int, ...]:
    values = ((value,) * num_stages if isinstance(value, int) and not isinstance(value, bool)
              else _int_sequence(name, value))
    if len(values) != num_stages:
        raise ValueError(f'{name} needs one value per stage ({num_stages}), got {list(values)}')
    for v in values:
        _check_int(f'{name} {list(values)}', v, minimum=minimum)
    return values


def _check_out_indices(out_indices, num_stages: int, name: str = 'out_indices') -> Tuple[int, ...]:
    if isinstance(out_indices, int) and not isinstance(out_indices, bool):
        out_indices = (out_indices,)
    out_indices = _int_sequence(name, out_indices)
    normalised = []
    for i in out_indices:
        if not isinstance(i, int) or not -num_stages <= i < num_stages:
            raise ValueError(f'{name} {list(out_indices)}: {i!r} is not a stage index; '
                             f'allowed are 0..{num_stages - 1} (or negative from the end)')
        normalised.append(i % num_stages)
    if len(set(normalised)) != len(normalised) or normalised != sorted(normalised):
        raise ValueError(f'{name} {list(out_indices)} must be increasing without repeats')
    return tuple(normalised)


def _int_sequence(name: str, value) -> Tuple:
    """``value`` as a tuple, if it is a list or tuple (its items are checked by the caller)."""
    if not isinstance(value, (list, tuple)):
        raise ValueError(f'{name}: expected a list or tuple of ints, got {value!r}')
    return tuple(value)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_int(name: str, value, minimum: int, maximum: Optional[int] = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f'{name}: expected an int, got {value!r}')
    if value < minimum or (maximum is not None and value > maximum):
        allowed = f'>= {minimum}' if maximum is None else f'in [{minimum}, {maximum}]'
        raise ValueError(f'{name}: {value} is out of range; allowed {allowed}')
