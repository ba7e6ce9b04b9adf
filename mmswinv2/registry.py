"""mmswinv2's registries (scope ``mmswinv2``), children of MMEngine's root registries.

``type='mmswinv2.SwinTransformerV2'`` (or ``'mmswinv2.CheckSegAnnotation'`` in a pipeline,
``'mmswinv2.AtomicCheckpointHook'`` among the hooks) in an mmdet or mmseg config makes
MMEngine import this module and look the name up here; building imports the modules in
``locations``.
"""
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS as MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import TRANSFORMS as MMENGINE_TRANSFORMS
from mmengine.registry import Registry

MODELS = Registry('model', parent=MMENGINE_MODELS, scope='mmswinv2',
                  locations=['mmswinv2.models'])
DATASETS = Registry('dataset', parent=MMENGINE_DATASETS, scope='mmswinv2',
                    locations=['mmswinv2.datasets'])
TRANSFORMS = Registry('transform', parent=MMENGINE_TRANSFORMS, scope='mmswinv2',
                      locations=['mmswinv2.datasets'])
OPTIM_WRAPPER_CONSTRUCTORS = Registry('optimizer wrapper constructor',
                                      parent=MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS,
                                      scope='mmswinv2', locations=['mmswinv2.optim'])
HOOKS = Registry('hook', parent=MMENGINE_HOOKS, scope='mmswinv2', locations=['mmswinv2.engine'])
