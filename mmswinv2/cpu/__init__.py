"""CPU inference speed for SwinV2, applied to an unchanged model by one call.

``optimize_for_cpu_inference(model)`` puts an :class:`.block.InferenceBlock` in the place of
every SwinV2 block of ``model`` (a backbone, detector or segmentor in eval mode on the CPU):
the same parameters and state-dict keys, the same function, computed faster (packed linear
layers, the compiled attention kernel, window gathers, pieces). ``restore(model)`` puts the
blocks back. The backbone does both itself: its ``eval()`` on the CPU optimizes and its
``train()`` restores (``SwinTransformerV2(cpu_inference=False)`` turns that off), so MMEngine's
loops, ``tools/test.py`` and MMDetection's / MMSegmentation's inferencers get the speed.
"""
import functools

import torch.nn as nn
from mmengine.logging import print_log

from ..models.blocks import SwinBlockV2
from . import kernel
from .block import InferenceBlock

__all__ = ['optimize_for_cpu_inference', 'restore', 'is_optimized', 'use_cpu_inference']


def optimize_for_cpu_inference(model: nn.Module) -> nn.Module:
    """Swap ``model``'s SwinV2 blocks for inference blocks, in place; returns ``model``.

    The model must be in eval mode with its blocks on the CPU. A model already optimized is
    left as it is (an info line says so)."""
    if model.training:
        raise ValueError(f'optimize_for_cpu_inference: {type(model).__name__} is in training '
                         f'mode; call model.eval() first (the inference blocks have no '
                         f'backward, and train() would put the original blocks back)')
    blocks = [m for m in model.modules() if isinstance(m, SwinBlockV2)]
    devices = {p.device.type for block in blocks for p in block.parameters()}
    if devices - {'cpu'}:
        raise ValueError(f'optimize_for_cpu_inference: {type(model).__name__} has SwinV2 blocks '
                         f'on {sorted(devices - {"cpu"})}; it speeds up CPU inference only: '
                         f'model.cpu() first, or leave it as it is on the GPU')
    if not blocks:
        if is_optimized(model):
            print_log('optimize_for_cpu_inference: the model is optimized already; nothing to '
                      'do', logger='current')
        else:
            print_log(f'optimize_for_cpu_inference: {type(model).__name__} has no SwinV2 '
                      f'block; nothing to do', logger='current')
        return model
    _swap(model, SwinBlockV2, InferenceBlock)
    _log_once(len(blocks))
    return model


def restore(model: nn.Module) -> nn.Module:
    """Put the original blocks back in place of the inference blocks; returns ``model``."""
    _swap(model, InferenceBlock, lambda block: block.restore())
    return model


def is_optimized(model: nn.Module) -> bool:
    return any(isinstance(m, InferenceBlock) for m in model.modules())


def use_cpu_inference(model: nn.Module, enabled: bool) -> None:
    """The backbone's seam (its ``train(mode)``): optimize when ``enabled`` (eval mode) and
    every block is on the CPU and not optimized yet; otherwise restore."""
    if not enabled:
        restore(model)
    elif not is_optimized(model) and all(p.device.type == 'cpu' for p in model.parameters()):
        optimize_for_cpu_inference(model)


def _swap(model: nn.Module, kind: type, make) -> None:
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, kind):
                replacement = make(child)
                replacement.train(child.training)
                setattr(parent, name, replacement)


@functools.lru_cache(maxsize=None)
def _log_once(blocks: int) -> None:
    kernel.available()  # says itself when it is not built
    print_log(f'mmswinv2.cpu: CPU inference of {blocks} SwinV2 blocks through '
              f'mmswinv2.cpu (attention kernel: {kernel.loaded_build or "not loaded"})',
              logger='current')
