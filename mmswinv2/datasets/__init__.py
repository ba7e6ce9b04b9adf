from .coco import CocoDataset
from .transforms import CheckSegAnnotation

__all__ = ['CheckSegAnnotation', 'CocoDataset']
