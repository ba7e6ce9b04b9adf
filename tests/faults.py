"""Fault injection for tests/test_resume.py: a hook that SIGKILLs its own training process at a
chosen point of a chosen iteration, as preemption or the OOM killer would (no cleanup, no
``finally``). Loaded by a test config's ``custom_imports``."""
import os
import signal

from mmengine.hooks import Hook
from mmengine.registry import HOOKS


def die(*_):
    os.kill(os.getpid(), signal.SIGKILL)


@HOOKS.register_module()
class KillAt(Hook):
    """``point`` of iteration ``iteration`` (1-based, as the log counts):

    - ``'forward'``: inside the model's forward (mid-iteration);
    - ``'checkpoint_write'``: inside the checkpoint write, its bytes written to the temporary
      file and not yet on disk or renamed (the moment an in-place write leaves half a file);
    - ``'last_checkpoint'``: after the checkpoint is in place, before ``last_checkpoint`` names
      it.
    """

    def __init__(self, point: str, iteration: int):
        assert point in ('forward', 'checkpoint_write', 'last_checkpoint'), point
        self.point, self.iteration = point, iteration

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if self.point == 'forward' and runner.iter + 1 == self.iteration:
            model = getattr(runner.model, 'module', runner.model)
            model.backbone.stages[1].register_forward_hook(die)

    def before_save_checkpoint(self, runner, checkpoint):
        if runner.iter + 1 != self.iteration:  # saved after iteration runner.iter + 1
            return
        if self.point == 'checkpoint_write':
            os.fsync = die
        else:
            replace = os.replace

            def replace_then_die(*args, **kwargs):
                replace(*args, **kwargs)
                die()
            os.replace = replace_then_die


@HOOKS.register_module()
class NanWeightAt(Hook):
    """Before iteration ``iteration`` (1-based), set the decode head's classifier to NaN: the
    loss of that iteration is NaN, as after a divergence."""

    def __init__(self, iteration: int):
        self.iteration = iteration

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if runner.iter + 1 == self.iteration:
            model = getattr(runner.model, 'module', runner.model)
            model.decode_head.conv_seg.weight.data.fill_(float('nan'))
