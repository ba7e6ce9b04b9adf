"""mmswinv2's registry: scope ``mmswinv2``, a child of MMEngine's root MODELS.

``type='mmswinv2.SwinTransformerV2'`` in an mmdet or mmseg config makes MMEngine import this module
and look the name up here; building it imports ``mmswinv2.models`` (``locations``).
"""
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry

MODELS = Registry('model', parent=MMENGINE_MODELS, scope='mmswinv2',
                  locations=['mmswinv2.models'])
