"""Inference the OpenMMLab way on images without annotations: MMDetection's ``DetInferencer``,
``init_detector`` + ``inference_detector``, MMSegmentation's ``MMSegInferencer``, ``init_model``
+ ``inference_model``, on every shipped config; and tools/infer.py on folders and videos.

Configs are shrunk by ``--cfg-options``-style overrides (narrow backbone, small test images,
few proposals) so that each runs in about a second on CPU; no weights (random init).
"""
import glob
import json
import os

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config

from helpers import load_tool

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
DET = sorted(glob.glob(os.path.join(ROOT, 'configs', 'det', '*.py')))
SEG = sorted(glob.glob(os.path.join(ROOT, 'configs', 'seg', '*.py')))
CHANNELS = [16, 32, 64, 128]

infer = load_tool('infer.py')


def shrink_overrides(cfg: Config) -> dict:
    """Dotted-key overrides, as ``--cfg-options`` takes them, that make ``cfg`` fast on CPU."""
    backbone = cfg.model.backbone
    small = dict(depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8])
    if backbone.type.endswith('SwinTransformerV2'):
        # _delete_: replace the base config's arch name by a dict
        options = {'model.backbone.arch': dict(_delete_=True, embed_dims=CHANNELS[0], **small)}
    else:  # mmdet's / mmseg's Swin V1
        options = {'model.backbone.embed_dims': CHANNELS[0], 'model.backbone.depths':
                   small['depths'], 'model.backbone.num_heads': small['num_heads']}
    options['model.backbone.init_cfg'] = None
    if 'neck' in cfg.model:
        options['model.neck.in_channels'] = CHANNELS
    if 'decode_head' in cfg.model:
        options['model.decode_head.in_channels'] = CHANNELS
        options['model.auxiliary_head.in_channels'] = CHANNELS[2]
    if 'rpn' in cfg.model.get('test_cfg', {}):
        options.update({'model.test_cfg.rpn.nms_pre': 100, 'model.test_cfg.rpn.max_per_img': 50})
    for key in ('test_dataloader.dataset.pipeline', 'test_pipeline'):
        pipeline = cfg
        for part in key.split('.'):
            pipeline = pipeline.get(part) if pipeline is not None else None
        for i, step in enumerate(pipeline or []):
            if step['type'].endswith('Resize'):
                options[f'{key}.{i}.scale'] = (320, 192)
    return options


def shrunk(path: str) -> Config:
    cfg = Config.fromfile(path)
    cfg.merge_from_dict(shrink_overrides(cfg))
    return cfg


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    """A JPEG and a PNG of different sizes, no annotations anywhere."""
    folder = tmp_path_factory.mktemp('images')
    rng = np.random.default_rng(0)
    paths = []
    for name, (h, w) in (('street.jpg', (120, 160)), ('room.png', (90, 130))):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        cv2.rectangle(image, (20, 20), (70, 60), (0, 0, 255), -1)
        cv2.imwrite(str(folder / name), image)
        paths.append(str(folder / name))
    return paths


@pytest.mark.parametrize('path', DET, ids=os.path.basename)
def test_detection_inference_entry_points(path, images):
    from mmdet.apis import DetInferencer, inference_detector, init_detector
    cfg = shrunk(path)
    inferencer = DetInferencer(model=cfg, device='cpu', show_progress=False)
    for image in images:
        out = inferencer(image, return_vis=True, no_save_vis=True, pred_score_thr=0.0)
        [prediction] = out['predictions']
        assert {'labels', 'scores', 'bboxes'} <= set(prediction)
        [picture] = out['visualization']
        assert picture.shape == cv2.imread(image).shape
    model = init_detector(cfg, checkpoint=None, device='cpu')
    for image in images:
        result = inference_detector(model, image)
        assert result.ori_shape == cv2.imread(image).shape[:2]
        assert result.pred_instances.bboxes.shape[-1] == 4


@pytest.mark.parametrize('path', SEG, ids=os.path.basename)
def test_segmentation_inference_entry_points(path, images):
    from mmseg.apis import MMSegInferencer, inference_model, init_model
    cfg = shrunk(path)
    inferencer = MMSegInferencer(model=cfg, device='cpu')
    for image in images:
        out = inferencer(image, return_vis=True)
        assert out['predictions'].shape == cv2.imread(image).shape[:2]
        assert out['visualization'].shape == cv2.imread(image).shape
    model = init_model(cfg, device='cpu')
    for image in images:
        result = inference_model(model, image)
        assert tuple(result.pred_sem_seg.data.shape[1:]) == cv2.imread(image).shape[:2]


def saved_model(tmp_path, config_path, codebase):
    """A shrunk config written as a file, and a checkpoint of its randomly initialised model
    (with the dataset's classes and palette, as MMEngine training saves them)."""
    from mmswinv2.launch import build_model
    cfg = shrunk(config_path)
    model = build_model(cfg, codebase)
    metainfo = dict(cfg.test_dataloader.dataset.metainfo)  # classes, palette
    checkpoint = tmp_path / 'model.pth'
    torch.save(dict(state_dict=model.state_dict(), meta=dict(dataset_meta=metainfo)), checkpoint)
    config = tmp_path / 'config.py'
    cfg.dump(str(config))
    return str(config), str(checkpoint), metainfo['classes']


def write_video(path, frames=5, size=(96, 128)):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), 5, size[::-1])
    rng = np.random.default_rng(1)
    for _ in range(frames):
        writer.write(rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    writer.release()


@pytest.mark.parametrize('config, codebase', [
    ('configs/det/demo_mask_rcnn_swinv2_shapes.py', 'mmdet'),
    ('configs/seg/demo_upernet_swinv2_shapes.py', 'mmseg')])
def test_infer_tool_on_a_folder_and_a_video_with_bad_inputs_reported(
        tmp_path, images, config, codebase, capsys):
    config, checkpoint, classes = saved_model(tmp_path, os.path.join(ROOT, config), codebase)
    folder = tmp_path / 'inputs'
    folder.mkdir()
    for image in images:
        os.link(image, folder / os.path.basename(image))
    (folder / 'broken.jpg').write_bytes(b'not an image')
    video = tmp_path / 'clip.mp4'
    write_video(video)
    empty = tmp_path / 'empty'
    empty.mkdir()
    out = tmp_path / 'out'
    status = infer.main([config, checkpoint, str(folder), str(video), str(tmp_path / 'nope.jpg'),
                         str(empty), '--out-dir', str(out), '--device', 'cpu',
                         '--batch-size', '2', '--pred-score-thr', '0.0'])
    captured = capsys.readouterr()
    assert status == 1
    assert '3 of 4 inputs done' in captured.out  # 2 images + the video; broken.jpg failed
    assert f'{folder / "broken.jpg"}: cannot be read as an image' in captured.err
    assert f'{tmp_path / "nope.jpg"}: no such file or folder' in captured.err
    assert f'{empty}: no images' in captured.err

    for image in images:
        name = os.path.splitext(os.path.basename(image))[0]
        picture = cv2.imread(str(out / 'vis' / f'{name}.jpg'))
        source = cv2.imread(image)
        assert picture is not None and picture.shape == source.shape
        assert np.abs(picture.astype(int) - source.astype(int)).mean() > 1  # something drawn
        prediction = json.loads((out / 'preds' / f'{name}.json').read_text())
        if codebase == 'mmdet':
            assert len(prediction['bboxes']) == len(prediction['scores']) > 0
            assert set(prediction['classes']) <= set(classes)
        else:
            assert abs(sum(c['fraction'] for c in prediction['classes']) - 1) < 1e-4
            label_map = cv2.imread(str(out / 'preds' / prediction['label_map']),
                                   cv2.IMREAD_UNCHANGED)
            assert label_map.shape == source.shape[:2]
    clip = json.loads((out / 'preds' / 'clip.json').read_text())
    assert len(clip['frames']) == 5
    capture = cv2.VideoCapture(str(out / 'vis' / 'clip.mp4'))
    assert capture.isOpened() and int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 5
    capture.release()
