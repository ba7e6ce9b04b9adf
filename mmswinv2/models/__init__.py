from mmengine.registry import MODELS as MMENGINE_MODELS

from .swin_transformer_v2 import SwinTransformerV2

# A plain ``type='SwinTransformerV2'`` (after ``custom_imports=dict(imports=['mmswinv2'])``) is
# looked up in the config's own scope (mmdet, mmseg) and then in MMEngine's root registry, never
# in sibling scopes such as ours: register there too so it resolves from every codebase.
if 'SwinTransformerV2' not in MMENGINE_MODELS.module_dict:
    MMENGINE_MODELS.register_module(module=SwinTransformerV2)

__all__ = ['SwinTransformerV2']
