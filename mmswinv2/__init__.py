"""mmswinv2: Swin Transformer V2 backbones for MMDetection and MMSegmentation.

Importing the package registers ``SwinTransformerV2`` (scope ``mmswinv2``).
"""
from .models import SwinTransformerV2

__version__ = '0.1.0'
__all__ = ['SwinTransformerV2', '__version__']
