"""Shared by the tests and by the scripts that make reference fixtures (which run elsewhere)."""
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


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, f'shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}'
    return (a - b).abs().max().item()


def capture_outputs(modules, run, extract=lambda output: output):
    """Call ``run()`` without gradients; return ``extract(output)`` of every call of each of
    ``modules`` (in call order) and what ``run`` returned."""
    captured = []
    hooks = [m.register_forward_hook(lambda module, inputs, output:
                                     captured.append(extract(output))) for m in modules]
    try:
        with torch.no_grad():
            result = run()
    finally:
        for h in hooks:
            h.remove()
    return captured, result


def raw_stage_outputs(model: nn.Module, x: torch.Tensor):
    """Run an mmswinv2 backbone; return its stage outputs before the output norms (NCHW) and its
    normal (normalised) outputs."""
    return capture_outputs(model.stages, lambda: model(x), lambda o: o.permute(0, 3, 1, 2))
