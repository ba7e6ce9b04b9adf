"""Load any supported checkpoint into a :class:`~mmswinv2.SwinTransformerV2`, strictly."""
import logging
from typing import Optional

import torch

from .arch import (describe_mismatch, infer_arch, pretraining_windows, windows_from_coords_tables,
                   windows_from_hf_config)
from .formats import Layout, resolve_layout
from .io import Checkpoint, CheckpointError, read_checkpoint

#: Where each layout keeps per-stage position buffers that reveal the window sizes.
BUFFER_STAGE_KEYS = dict(official=r'layers\.(\d+)\.blocks\.0\.attn\.',
                         simmim=r'layers\.(\d+)\.blocks\.0\.attn\.',
                         mmpretrain=r'stages\.(\d+)\.blocks\.0\.attn\.w_msa\.')


def read_backbone_weights(path: str, layout: str = 'auto'):
    """Read ``path`` and convert it: ``(checkpoint, layout, canonical state dict, arch)``."""
    return backbone_weights(read_checkpoint(path), layout)


def backbone_weights(ckpt: Checkpoint, layout: str = 'auto'):
    """Convert a read checkpoint: ``(checkpoint, layout, canonical state dict, arch)``."""
    found = resolve_layout(ckpt.state_dict, layout, ckpt.path)
    # Integers, booleans or complex numbers in a weight are a damaged or foreign file (any float
    # precision is fine). Checked before converting: fusing q, k, v would promote an integer one.
    dropped = found.dropped(ckpt.state_dict)
    skipped = set(dropped['regenerable_buffers']) | set(dropped['heads'])
    not_float = [f'{k}: {v.dtype}' for k, v in found.unwrap(ckpt.state_dict).items()
                 if k not in skipped and not v.is_floating_point()]
    if not_float:
        raise CheckpointError(f'{ckpt.path} ({found.name} layout): weights must be floating '
                              f'point; dtype mismatch {not_float[:4]}. Nothing was loaded.')
    try:
        state_dict = found.convert(ckpt.state_dict)
    except (RuntimeError, IndexError, KeyError, ValueError) as err:  # a reorder on a bad shape
        raise CheckpointError(f'{ckpt.path}: read as {found.name} but its tensors cannot be '
                              f'converted: {err}') from None
    try:
        arch = infer_arch(state_dict)
    except (KeyError, IndexError) as err:
        raise CheckpointError(f'{ckpt.path}: read as {found.name} but {err} is missing; '
                              f'is it a SwinV2 backbone checkpoint?') from None
    return ckpt, found, state_dict, arch


def recorded_windows(ckpt: Checkpoint, layout: Layout) -> Optional[dict]:
    """``dict(window_sizes, pretrained_window_sizes)`` as the checkpoint records them: an HF
    ``config.json``, the official / SimMIM / mmpretrain position buffers, or the meta written
    by tools/convert_checkpoint.py; None when it records nothing (timm, plain state dicts)."""
    if ckpt.hf_config is not None:
        return windows_from_hf_config(ckpt.hf_config)
    if layout.name in BUFFER_STAGE_KEYS:
        return windows_from_coords_tables(layout.unwrap(ckpt.state_dict),
                                          BUFFER_STAGE_KEYS[layout.name])
    meta = ckpt.extra.get('meta')
    if isinstance(meta, dict) and meta.get('window_sizes') and meta.get('pretrained_window_sizes'):
        return dict(window_sizes=list(meta['window_sizes']),
                    pretrained_window_sizes=list(meta['pretrained_window_sizes']))
    return None


def load_pretrained(model: torch.nn.Module, path: str, layout: str = 'auto',
                    logger: Optional[logging.Logger] = None) -> dict:
    """Read ``path`` in any known layout, convert it and load it into ``model``.

    Everything is checked before a single weight is copied: the architecture (a mismatch names
    it, e.g. "depths [2, 2, 6, 2] in config, [2, 2, 18, 2] in checkpoint"), unexpected keys,
    tensor shapes, and (in :func:`backbone_weights`) dtypes. The only model keys allowed to have
    no source are output norms ``norm{i}`` that the source model did not have at all
    (classification checkpoints have one final norm); they are set to the identity (weight 1,
    bias 0) and reported.
    Afterwards the windows the checkpoint was pretrained with, where it records them, become
    the model's ``pretrained_window_sizes`` unless the config set them (see
    :func:`_use_pretraining_windows`).
    Returns a summary: ``format``, ``arch``, ``missing_norms``, ``pretraining_windows``.
    """
    ckpt, found, state_dict, arch = read_backbone_weights(path, layout)
    # A layout's own needs (timm cr), or those recorded by tools/convert_checkpoint.py.
    meta = ckpt.extra.get('meta')
    recorded = meta.get('backbone_options') if isinstance(meta, dict) else None
    required = {k: v for k, v in (found.required_options or recorded or {}).items()
                if k in model.variant_options}
    wrong_options = {k for k, v in required.items() if model.variant_options[k] != v}
    if wrong_options:
        source = meta.get('source_format', found.name) if recorded else found.name
        raise CheckpointError(
            f'{ckpt.path}: a {source} checkpoint; build the backbone with '
            + ', '.join(f'{k}={v!r}' for k, v in required.items())
            + ' (see mmswinv2.variants.TIMM_CR_SETTINGS); it has '
            + ', '.join(f'{k}={model.variant_options[k]!r}' for k in sorted(wrong_options)))
    mismatch = describe_mismatch(_model_arch(model), arch)
    if mismatch:
        raise CheckpointError(f'{ckpt.path}: architecture mismatch: ' + '; '.join(mismatch))

    own = model.state_dict()
    own.pop('pretrained_windows')  # set from the checkpoint's records below, not loaded
    unexpected = sorted(set(state_dict) - set(own))
    missing = sorted(set(own) - set(state_dict))
    # An output norm the source model did not have lacks all its keys; one with a weight but
    # no bias (or the reverse) is a damaged file, reported with the other missing keys.
    missing_norms = sorted(n for n in {k.split('.')[0] for k in missing if k.startswith('norm')}
                           if not any(k.startswith(f'{n}.') for k in state_dict))
    not_norms = [k for k in missing if k.split('.')[0] not in missing_norms]
    wrong_shape = [f'{k}: {tuple(v.shape)} in checkpoint, {tuple(own[k].shape)} in model'
                   for k, v in state_dict.items() if k in own and v.shape != own[k].shape]
    problems = []
    if unexpected:
        problems.append(f'unexpected keys {unexpected[:6]}'
                        + ('...' if len(unexpected) > 6 else ''))
    if not_norms:
        problems.append(f'missing keys {not_norms[:6]}' + ('...' if len(not_norms) > 6 else ''))
    if wrong_shape:
        problems.append('shape mismatch ' + '; '.join(wrong_shape[:4]))
    if problems:
        raise CheckpointError(f'{ckpt.path} ({found.name} layout): ' + '; '.join(problems)
                              + '. Nothing was loaded.')

    with torch.no_grad():
        model.load_state_dict(state_dict, strict=False)
        for name in missing_norms:
            norm = getattr(model, name)
            torch.nn.init.ones_(norm.weight)
            torch.nn.init.zeros_(norm.bias)
    logger = logger or logging.getLogger('mmswinv2')
    logger.info(
        f'loaded {ckpt.path} ({found.name} layout, embed_dims {arch["embed_dims"]}, depths '
        f'{arch["depths"]}); output norms without a source, set to identity: '
        f'{missing_norms or "none"}')
    windows = recorded_windows(ckpt, found)
    trained = pretraining_windows(windows) if windows else None
    _use_pretraining_windows(model, trained, ckpt.path, logger)
    return dict(format=found.name, arch=arch, missing_norms=missing_norms,
                pretraining_windows=trained)


def _use_pretraining_windows(model, trained: Optional[list], path: str,
                             logger: logging.Logger) -> None:
    """The position-bias coordinates must be normalised by the windows the checkpoint was
    trained with. Not set in the config: adopt the checkpoint's. Set: it wins, with a warning
    if it contradicts the checkpoint. Unknown: say so and how to set them."""
    runs = list(model.window_sizes)
    if model.pretrained_window_sizes_set:
        configured = pretraining_windows(dict(
            window_sizes=runs, pretrained_window_sizes=model.pretrained_window_sizes))
        if trained is not None and trained != configured:
            logger.warning(
                f'{path} was pretrained with windows {trained}, but the config sets '
                f'pretrained_window_sizes={list(model.pretrained_window_sizes)} (windows '
                f'{configured}); the config wins. Remove it from the config to use the '
                f"checkpoint's, or set pretrained_window_sizes={tuple(trained)}.")
    elif trained is not None:
        model.set_pretrained_window_sizes(trained)
        logger.info(f'{path} was pretrained with windows {trained}; the model runs windows '
                    f'{runs}: pretrained_window_sizes={tuple(trained)}')
    else:
        logger.info(
            f'{path} does not record the windows it was pretrained with: the position bias '
            f'is evaluated as if it were pretrained with the model\'s windows {runs}. If it '
            f'was pretrained with others (8 for *_window8_256, (12, 12, 12, 6) for 22K 192 px '
            f'checkpoints), set pretrained_window_sizes in the backbone config.')


def _model_arch(model) -> dict:
    proj = model.patch_embed.proj
    return dict(embed_dims=model.embed_dims, depths=list(model.depths),
                num_heads=list(model.num_heads), patch_size=proj.kernel_size[0],
                in_channels=proj.in_channels)
