"""COCO instance segmentation as MMDetection reads it, with empty polygon lists tolerated."""
from mmdet.datasets import CocoDataset as MMDetCocoDataset
from mmengine.logging import print_log

from ..registry import DATASETS


@DATASETS.register_module()
class CocoDataset(MMDetCocoDataset):
    """MMDetection's ``CocoDataset``; an annotation whose ``segmentation`` is an empty list gets
    an empty polygon list instead of no mask, so ``LoadAnnotations`` ignores that instance like
    a degenerate polygon. (MMDetection drops the key and then fails with ``KeyError: 'mask'``,
    naming no file.)"""

    def parse_data_info(self, raw_data_info: dict):
        info = super().parse_data_info(raw_data_info)
        empty = [inst for inst in info['instances'] if 'mask' not in inst]
        for instance in empty:
            instance['mask'] = []
        if empty:
            print_log(f'{info["img_path"]}: {len(empty)} annotation(s) without a polygon are '
                      f'ignored', logger='current')
        return info
