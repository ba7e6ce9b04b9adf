"""A clear stop when the training loss stops being finite.

Without it a NaN loss goes on silently: the optimizer applies NaN gradients, every later loss
is NaN, and the run ends hours later with a model of NaNs (mmdet #9291, Swin-Transformer #82).
Under a dynamic loss scale (``AmpOptimWrapper``) a non-finite step is skipped by the scaler
and the scale lowered, which is how fp16 training recovers from an overflow: the hook logs
each skip and stops only when the skips do not end.
"""
import math
from typing import Optional

import torch
from mmengine.hooks import Hook
from mmengine.logging import print_log

from ..registry import HOOKS


class NonFiniteLossError(RuntimeError):
    """The loss of a training iteration was not finite (see :class:`NonFiniteLossHook`)."""


@HOOKS.register_module()
class NonFiniteLossHook(Hook):
    """Stops training at the first iteration whose loss is NaN or infinite, naming the
    iteration, every loss term and the learning rate; under a dynamic loss scale, after
    ``max_skipped_steps`` skipped steps in a row.

    Args:
        max_skipped_steps: consecutive non-finite steps a dynamic loss scale may skip (each
            halves the scale) before the run stops.
    """

    priority = 'VERY_HIGH'  # before the logger and checkpoint hooks of the same iteration

    def __init__(self, max_skipped_steps: int = 20):
        if not isinstance(max_skipped_steps, int) or max_skipped_steps < 1:
            raise ValueError(f'NonFiniteLossHook: max_skipped_steps must be a positive '
                             f'integer, got {max_skipped_steps!r}')
        self.max_skipped_steps = max_skipped_steps
        self.skipped = 0

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs: Optional[dict] = None) -> None:
        terms = {name: float(value.detach() if isinstance(value, torch.Tensor) else value)
                 for name, value in (outputs or {}).items() if 'loss' in name}
        if all(math.isfinite(value) for value in terms.values()):
            self.skipped = 0
            return
        where = (f'iteration {runner.iter + 1}: the loss is not finite ('
                 + ', '.join(f'{name}={value:.4g}' for name, value in terms.items())
                 + f'), lr {_learning_rates(runner.optim_wrapper)}')
        scaler = getattr(runner.optim_wrapper, 'loss_scaler', None)
        if scaler is not None and getattr(scaler, 'is_enabled', lambda: False)():
            self.skipped += 1
            print_log(f'{where}; the loss scaler skipped the step (scale now '
                      f'{scaler.get_scale():g}; {self.skipped} in a row)', logger='current',
                      level=30)
            if self.skipped < self.max_skipped_steps:
                return
            raise NonFiniteLossError(
                f'{where}: {self.skipped} steps in a row were not finite under the dynamic '
                f'loss scale, so training stops. The weights are those of the last finite '
                f'step; lower the learning rate or clip the gradients '
                f'(optim_wrapper.clip_grad=dict(max_norm=...)) and resume from the last '
                f'checkpoint.')
        raise NonFiniteLossError(
            f'{where}, so training stops: the optimizer has applied this step\'s gradients, '
            f'so the current weights are not usable. Resume from the last checkpoint '
            f'(--resume) with a lower learning rate, gradient clipping '
            f'(optim_wrapper.clip_grad=dict(max_norm=...)), or on a GPU with a dynamic loss '
            f'scale (--amp), which skips such steps.')


def _learning_rates(optim_wrapper) -> str:
    """The distinct learning rates of the parameter groups, smallest to largest."""
    rates = sorted({lr for values in optim_wrapper.get_lr().values() for lr in values})
    if len(rates) <= 2:
        return ', '.join(f'{lr:.3g}' for lr in rates)
    return f'{rates[0]:.3g} .. {rates[-1]:.3g} ({len(rates)} groups)'
