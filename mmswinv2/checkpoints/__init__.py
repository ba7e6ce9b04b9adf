from .formats import LAYOUTS, Layout, convert_state_dict, detect_layout, resolve_layout
from .io import Checkpoint, CheckpointError, mmengine_checkpoints_allowed, read_checkpoint
from .loading import load_pretrained

__all__ = ['LAYOUTS', 'Layout', 'convert_state_dict', 'detect_layout', 'resolve_layout',
           'Checkpoint',
           'CheckpointError', 'mmengine_checkpoints_allowed', 'read_checkpoint',
           'load_pretrained']
