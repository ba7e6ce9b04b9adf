"""Data checks that turn silent or anonymous failures into errors naming the file."""
import numpy as np
from mmcv.transforms import BaseTransform

from ..registry import TRANSFORMS


@TRANSFORMS.register_module()
class CheckSegAnnotation(BaseTransform):
    """Check a loaded label map against its image, right after ``LoadAnnotations``.

    Without it a label map of another size than its image is silently stretched by the train
    resize and fails inside the IoU metric at test time, and a label above the class count
    fails inside the loss; neither error names a file. Without a label map (inference: the
    mmseg inferencers drop ``LoadAnnotations``) there is nothing to check and it passes the
    results on unchanged.

    Args:
        num_classes: classes of the model; valid labels are ``0..num_classes-1`` (after
            ``reduce_zero_label``) and ``ignore_index``.
        ignore_index: the label of ignored pixels.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes = num_classes
        self.ignore_index = ignore_index

    def transform(self, results: dict) -> dict:
        labels = results.get('gt_seg_map')
        if labels is None:
            return results
        seg_path, img_path = results.get('seg_map_path'), results.get('img_path')
        image_hw = tuple(results['ori_shape'][:2])
        if labels.shape[:2] != image_hw:
            raise ValueError(f'{seg_path}: label map is {labels.shape[1]}x{labels.shape[0]} '
                             f'(WxH) but its image {img_path} is {image_hw[1]}x{image_hw[0]}')
        bad = np.unique(labels[(labels >= self.num_classes) & (labels != self.ignore_index)])
        if bad.size:
            shown = bad[:10].tolist()
            raise ValueError(f'{seg_path}: label values {shown} are neither classes '
                             f'0..{self.num_classes - 1} (after reduce_zero_label) nor the '
                             f'ignore index {self.ignore_index}')
        return results

    def __repr__(self):
        return (f'{type(self).__name__}(num_classes={self.num_classes}, '
                f'ignore_index={self.ignore_index})')
