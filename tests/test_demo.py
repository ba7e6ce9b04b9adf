"""The embedded demo: its data generator, and the whole demo pipeline in smoke mode."""
import glob
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from e2e_helpers import ROOT

sys.path.insert(0, os.path.join(ROOT, 'tools'))
from make_demo_data import CLASSES, SEG_CLASSES, make_dataset  # noqa: E402


@pytest.fixture(scope='module')
def demo_data(tmp_path_factory):
    root = tmp_path_factory.mktemp('demo_data')
    make_dataset(str(root), n_train=6, n_val=3, seed=3, progress=False)
    return root


def test_coco_json_is_valid_for_pycocotools(demo_data):
    from pycocotools.coco import COCO
    coco = COCO(str(demo_data / 'coco' / 'annotations' / 'instances_train.json'))
    assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == list(CLASSES)
    assert len(coco.getImgIds()) == 6
    sizes = set()
    for image in coco.loadImgs(coco.getImgIds()):
        pixels = cv2.imread(str(demo_data / 'coco' / 'train' / image['file_name']))
        assert pixels.shape[:2] == (image['height'], image['width'])
        sizes.add(pixels.shape[:2])
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image['id']))
        assert anns, image['file_name']
        for ann in anns:
            mask = coco.annToMask(ann)  # the polygons rasterise to the object's visible region
            x, y, w, h = ann['bbox']
            assert w > 0 and h > 0 and x + w <= image['width'] and y + h <= image['height']
            assert abs(mask.sum() - ann['area']) <= 0.3 * ann['area'] + 30
    assert len(sizes) > 1  # images of varied sizes


def test_ade_label_maps_load_through_mmseg(demo_data):
    from mmseg.datasets import BaseSegDataset
    from mmseg.datasets.transforms import LoadAnnotations
    dataset = BaseSegDataset(
        data_root=str(demo_data / 'ade'), metainfo=dict(classes=SEG_CLASSES),
        data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'),
        img_suffix='.jpg', seg_map_suffix='.png', reduce_zero_label=True, pipeline=[])
    assert len(dataset) == 6
    seen = set()
    for info in dataset:
        result = LoadAnnotations()(dict(info))
        labels = result['gt_seg_map']
        image = cv2.imread(info['img_path'])
        assert labels.shape == image.shape[:2], info['seg_map_path']
        seen |= set(np.unique(labels).tolist())
    # background + shape classes after reduce_zero_label, and 255 for the unlabeled outlines
    assert {0, 255} <= seen and seen <= set(range(len(SEG_CLASSES))) | {255}


def test_generator_is_deterministic(tmp_path, demo_data):
    make_dataset(str(tmp_path), n_train=6, n_val=3, seed=3, progress=False)
    for name in ('instances_train.json', 'instances_val.json'):
        with open(tmp_path / 'coco' / 'annotations' / name) as a, \
                open(demo_data / 'coco' / 'annotations' / name) as b:
            assert json.load(a) == json.load(b)


def test_demo_pipeline_in_smoke_mode_writes_metrics_pictures_and_curves(tmp_path):
    out, data = tmp_path / 'out', tmp_path / 'data'
    result = subprocess.run(
        [sys.executable, 'tools/demo.py', '--smoke', '--out-dir', str(out),
         '--data-root', str(data)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f'metrics:  {out / "metrics.json"}' in result.stdout and '(seed 0)' in result.stdout
    metrics = json.loads((out / 'metrics.json').read_text())
    assert metrics['detection']['seed'] == metrics['segmentation']['seed'] == 0
    assert set(metrics) == {'detection', 'segmentation'}
    assert set(metrics['detection']['trained']) >= {'bbox AP50', 'segm AP'}
    assert metrics['segmentation']['trained']['mIoU (%)'] is not None

    curves = cv2.imread(str(out / 'curves.png'))
    assert curves is not None and curves.std() > 10
    val_images = sorted(glob.glob(str(data / 'coco' / 'val' / '*.jpg')))
    for task in ('detection', 'segmentation'):
        picture = cv2.imread(str(out / 'pictures' / f'{task}_0.png'))
        original = cv2.imread(val_images[0])
        h, w = original.shape[:2]
        # the visualisers draw ground truth | prediction side by side over the image
        assert picture.shape[:2] == (h, 2 * w), task
        ground_truth = picture[:, :w].astype(int)
        assert np.abs(ground_truth - original.astype(int)).mean() > 5, task  # overlays drawn
        assert np.corrcoef(ground_truth.ravel(), original.ravel())[0, 1] > 0.3, task  # over it
