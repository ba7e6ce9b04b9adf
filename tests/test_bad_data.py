"""Bad data through the real dataset classes and our configs' pipelines: each case works as
MMDetection / MMSegmentation define it, or fails with a message naming the file."""
import json
import os
import shutil
import sys

import cv2
import pytest
from mmengine.config import Config
from mmengine.registry import DefaultScope

from e2e_helpers import ROOT

sys.path.insert(0, os.path.join(ROOT, 'tools'))
from make_demo_data import CLASSES, make_dataset  # noqa: E402


@pytest.fixture()
def data(tmp_path_factory, tmp_path):
    source = tmp_path_factory.getbasetemp() / 'bad_data_source'
    if not source.exists():
        make_dataset(str(source), n_train=3, n_val=2, seed=4, progress=False)
    shutil.copytree(source, tmp_path / 'data')
    return tmp_path / 'data'


def coco_dataset(data_root, test_mode=False):
    from mmdet.registry import DATASETS
    cfg = Config.fromfile(os.path.join(ROOT, 'configs', 'det', 'cascade_swinv2_tiny_coco.py'))
    dataset = cfg.train_dataloader.dataset
    dataset.update(data_root=str(data_root) + '/', metainfo=dict(classes=CLASSES),
                   ann_file='annotations/instances_train.json', data_prefix=dict(img='train/'),
                   test_mode=test_mode)
    with DefaultScope.overwrite_default_scope('mmdet'):
        return DATASETS.build(dataset)


def ade_dataset(data_root):
    from mmseg.registry import DATASETS
    cfg = Config.fromfile(os.path.join(ROOT, 'configs', 'seg', 'upernet_swinv2_tiny_ade20k.py'))
    dataset = cfg.train_dataloader.dataset
    dataset.update(data_root=str(data_root))
    with DefaultScope.overwrite_default_scope('mmseg'):
        return DATASETS.build(dataset)


def first_image(data, split='train'):
    return sorted((data / 'coco' / split).glob('*.jpg'))[0]


# ---- detection ------------------------------------------------------------------------------

def test_missing_data_root_names_the_annotation_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='nowhere/annotations/instances_train.json'):
        coco_dataset(tmp_path / 'nowhere')


def test_missing_image_names_the_file(data):
    missing = first_image(data)
    missing.unlink()
    dataset = coco_dataset(data / 'coco')
    with pytest.raises(FileNotFoundError, match=missing.name):
        dataset[0]


def test_corrupt_jpeg_names_the_file(data):
    corrupt = first_image(data)
    corrupt.write_bytes(b'\xff\xd8\xff\xe0 not really a jpeg')
    dataset = coco_dataset(data / 'coco')
    with pytest.raises(Exception, match=corrupt.name):
        dataset[0]


def test_empty_and_degenerate_polygons_and_images_without_objects_work(data):
    ann_file = data / 'coco' / 'annotations' / 'instances_train.json'
    coco = json.loads(ann_file.read_text())
    first = coco['annotations'][0]
    first['segmentation'] = []  # empty polygon list
    second = dict(coco['annotations'][1], id=10_000, segmentation=[[5.0, 5.0, 6.0, 6.0]])
    degenerate = dict(second, id=10_001, bbox=[5.0, 5.0, 0.0, 0.0], area=0.0)
    coco['annotations'] += [second, degenerate]
    empty_image = dict(coco['images'][0], id=999, file_name=first_image(data).name)
    coco['images'].append(empty_image)  # an image with no objects
    ann_file.write_text(json.dumps(coco))

    train = coco_dataset(data / 'coco')
    assert len(train) == 3  # the image without objects is filtered for training (filter_empty_gt)
    for i in range(len(train)):
        sample = train[i]
        assert sample['inputs'].shape[0] == 3
    test = coco_dataset(data / 'coco', test_mode=True)
    assert len(test) == 4  # and kept for evaluation
    assert all(test[i]['inputs'].shape[0] == 3 for i in range(4))


# ---- segmentation ---------------------------------------------------------------------------

def label_path(data, name='train_0000'):
    return data / 'ade' / 'annotations' / 'training' / f'{name}.png'


def image_path(data, name='train_0000'):
    return data / 'ade' / 'images' / 'training' / f'{name}.jpg'


def test_label_map_of_another_size_names_both_files(data):
    labels = cv2.imread(str(label_path(data)), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(label_path(data)), labels[:-7])
    dataset = ade_dataset(data / 'ade')
    with pytest.raises(ValueError, match=r'train_0000\.png: label map is .* but its image '
                                         r'.*train_0000\.jpg is'):
        dataset[0]


def test_labels_above_the_class_count_name_the_file(data):
    labels = cv2.imread(str(label_path(data)), cv2.IMREAD_UNCHANGED)
    labels[:4, :4] = 200  # 199 after reduce_zero_label; ADE20K has 150 classes
    cv2.imwrite(str(label_path(data)), labels)
    dataset = ade_dataset(data / 'ade')
    with pytest.raises(ValueError, match=r'train_0000\.png: label values \[199\] are neither '
                                         r'classes 0..149'):
        dataset[0]


@pytest.mark.parametrize('kind', ['grayscale', 'rgba'])
def test_grayscale_and_rgba_images_load_as_three_channels(data, kind):
    image = cv2.imread(str(image_path(data)))
    if kind == 'grayscale':
        cv2.imwrite(str(image_path(data)), cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
    else:  # RGBA content (PNG bytes) under the dataset's .jpg name; decoders read the content
        ok, encoded = cv2.imencode('.png', cv2.cvtColor(image, cv2.COLOR_BGR2BGRA))
        image_path(data).write_bytes(encoded.tobytes())
    sample = ade_dataset(data / 'ade')[0]
    assert sample['inputs'].shape[0] == 3


def test_missing_annotation_file_names_it(data):
    label_path(data).unlink()
    dataset = ade_dataset(data / 'ade')
    with pytest.raises(FileNotFoundError, match=r'train_0000\.png'):
        dataset[0]
