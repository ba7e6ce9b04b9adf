"""The main process's torch random state, saved with each checkpoint and restored on resume.

MMEngine's resume restores the model, optimizer, schedulers and counters, and seeds the run
again, but the torch generator then starts from the seed, not from where the interrupted run
was: dropout and drop path draw other masks than the uninterrupted run would have, and a
deterministic run resumed does not end with the same weights. The data pipeline's numpy and
``random`` states are left alone: MMEngine replays the skipped batches through it on resume
(iteration-based loops) or restarts the epoch with its seeded sampler and workers, which
draws them again.
"""
import torch
from mmengine.hooks import Hook
from mmengine.logging import print_log

from ..registry import HOOKS

_KEY = 'mmswinv2_torch_random_state'


@HOOKS.register_module()
class RandomStateHook(Hook):
    """Keeps ``torch.get_rng_state()`` (and the CUDA generators' states) in each checkpoint's
    ``meta`` and restores them when training resumes from it (not when weights are loaded
    with ``load_from``)."""

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        state = dict(cpu=torch.get_rng_state())
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state['cuda'] = torch.cuda.get_rng_state_all()
        checkpoint.setdefault('meta', {})[_KEY] = state

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        state = checkpoint.get('meta', {}).get(_KEY)
        if not getattr(runner, '_resume', False) or state is None:
            return
        torch.set_rng_state(state['cpu'])
        cuda = state.get('cuda')
        if cuda is not None and torch.cuda.is_available():
            if len(cuda) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(cuda)
            else:
                print_log(f'resume: the checkpoint holds the random states of {len(cuda)} '
                          f'GPUs, this process sees {torch.cuda.device_count()}; the CUDA '
                          f'generators start from the seed', logger='current', level=30)
