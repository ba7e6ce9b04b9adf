"""Random weights that exercise every part of a SwinV2 model: used by the tests, the reference
fixture scripts and ``tools/analysis/precision.py``."""
import math

import torch
import torch.nn as nn


def randomize_(model: nn.Module, seed: int) -> nn.Module:
    """Give every parameter of a Swin V2 model a random value that exposes bugs.

    Reference recipe: weights and biases ~ N(0, 0.05); LayerNorm weights 1 + 0.2 N(0, 1) (the
    official post-norm init of 0 would turn every block into the identity); logit scales uniform
    in [ln 5, ln 120], so some exceed the ln 100 clamp.
    """
    g = torch.Generator().manual_seed(seed)
    norm_weights = {id(m.weight) for m in model.modules()
                    if isinstance(m, nn.LayerNorm) and m.weight is not None}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith('logit_scale'):
                value = torch.rand(p.shape, generator=g) * (math.log(120) - math.log(5))
                value += math.log(5)
            elif id(p) in norm_weights:
                value = 1 + 0.2 * torch.randn(p.shape, generator=g)
            else:
                value = 0.05 * torch.randn(p.shape, generator=g)
            p.copy_(value)
    return model
