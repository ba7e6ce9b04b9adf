"""mmswinv2: Swin Transformer V2 backbones for MMDetection and MMSegmentation.

Importing the package registers ``SwinTransformerV2``, ``SwinLayerDecayOptimWrapperConstructor``,
the hooks of :mod:`.engine` (``AtomicCheckpointHook``, ``RandomStateHook``,
``NonFiniteLossHook``), ``CheckSegAnnotation`` and ``CocoDataset`` (scope ``mmswinv2``).
"""
from . import engine  # noqa: F401 (registers the hooks)
from .models import SwinTransformerV2
from .optim import SwinLayerDecayOptimWrapperConstructor  # noqa: F401 (registers it)
from .version import __version__

__all__ = ['SwinTransformerV2', '__version__']

try:  # the data classes need mmcv / mmdet (absent when only the backbone is used)
    from . import datasets  # noqa: F401
except ImportError:  # pragma: no cover
    pass
