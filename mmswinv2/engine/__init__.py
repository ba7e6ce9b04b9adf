"""Training-run safety for MMEngine runners: checkpoints written whole, ``--resume`` that only
continues from a whole checkpoint and restores the random state, and a clear stop when the
loss stops being finite."""
from .checkpoint import (AtomicCheckpointHook, atomic_write, checkpoint_problem,
                         find_resume_checkpoint)
from .finite_loss import NonFiniteLossError, NonFiniteLossHook
from .random_state import RandomStateHook

__all__ = ['AtomicCheckpointHook', 'atomic_write', 'checkpoint_problem',
           'find_resume_checkpoint', 'NonFiniteLossError', 'NonFiniteLossHook',
           'RandomStateHook']
