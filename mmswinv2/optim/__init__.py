from .layer_decay import SwinLayerDecayOptimWrapperConstructor, swin_layer_id

__all__ = ['SwinLayerDecayOptimWrapperConstructor', 'swin_layer_id']
