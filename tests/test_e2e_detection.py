"""End to end with the real tools and the real Cascade Mask R-CNN SwinV2-T config, on a tiny
COCO-format dataset generated here (JPEG files, polygon masks, annotation JSON)."""
import os
import re

import pytest
import torch

from mmswinv2 import SwinTransformerV2
from mmswinv2.checkpoints.formats import export_state_dict

from e2e_helpers import ROOT, logged_losses, run_tool

CONFIG = os.path.join(ROOT, 'configs', 'det', 'cascade_swinv2_tiny_coco.py')
# The heads predict as many classes as the data has (4); lists are indexed in --cfg-options.
NUM_CLASSES = [f'model.roi_head.bbox_head.{i}.num_classes=4' for i in range(3)] + [
    'model.roi_head.mask_head.num_classes=4']


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    """Tiny dataset, a SwinV2-T checkpoint in timm's layout, and a derived config that changes
    only the data location/classes, the image scale and the iteration counts."""
    import sys
    sys.path.insert(0, os.path.join(ROOT, 'tools'))
    from make_demo_data import CLASSES, make_dataset
    root = tmp_path_factory.mktemp('det_e2e')
    make_dataset(str(root / 'data'), n_train=4, n_val=2, seed=1, progress=False)
    backbone = SwinTransformerV2(arch='tiny')
    backbone.init_weights()
    torch.save(export_state_dict(backbone.state_dict(), 'timm'), root / 'swinv2_tiny_timm.pth')
    config = root / 'cascade_tiny_data.py'
    config.write_text(f'''
_base_ = {CONFIG!r}
data_root = {str(root / 'data' / 'coco') + '/'!r}
metainfo = dict(classes={CLASSES!r})
scales = [(160, 224), (192, 256)]
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='RandomChoice', transforms=[
        [dict(type='RandomChoiceResize', scales=scales, keep_ratio=True)],
        [dict(type='RandomChoiceResize', scales=[(128, 224), (160, 224)], keep_ratio=True),
         dict(type='RandomCrop', crop_type='absolute_range', crop_size=(96, 160),
              allow_negative_crop=True),
         dict(type='RandomChoiceResize', scales=scales, keep_ratio=True)]]),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(192, 256), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                                          'scale_factor')),
]
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False, dataset=dict(
    data_root=data_root, metainfo=metainfo, ann_file='annotations/instances_train.json',
    data_prefix=dict(img='train/'), pipeline=train_pipeline))
val_dataloader = dict(num_workers=0, persistent_workers=False, dataset=dict(
    data_root=data_root, metainfo=metainfo, ann_file='annotations/instances_val.json',
    data_prefix=dict(img='val/'), pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator
max_epochs = 2
train_cfg = dict(max_epochs=max_epochs, val_interval=2)
param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=2)]
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1))
# A 4-iteration model scores every box below MMDetection's 0.05 threshold, which leaves COCO
# evaluation nothing to score ("The testing results of the whole dataset is empty"): keep all.
model = dict(test_cfg=dict(rcnn=dict(score_thr=0.0)))
''')
    return root, config


def test_train_test_resume(setup):
    root, config = setup
    work = root / 'work'
    checkpoint_opt = f'model.backbone.init_cfg.checkpoint={root / "swinv2_tiny_timm.pth"}'
    # 1. train one of two epochs (2 iterations), as if stopped mid-way
    out = run_tool(['tools/train.py', str(config), '--work-dir', str(work),
                    '--cfg-options', checkpoint_opt, 'train_cfg.max_epochs=1', *NUM_CLASSES,
                    'val_cfg=None', 'val_dataloader=None', 'val_evaluator=None'])
    assert '(timm layout' in out  # the pretrained backbone was read and converted
    losses = logged_losses(out)
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    first = torch.load(work / 'epoch_1.pth', weights_only=False)  # our own file, trusted
    assert first['meta']['iter'] == 2 and first['optimizer']['state']

    # 2. --resume continues from iteration 2 with the optimizer state restored
    out = run_tool(['tools/train.py', str(config), '--work-dir', str(work), '--resume',
                    '--cfg-options', checkpoint_opt, *NUM_CLASSES])
    assert re.search(r'resumed epoch: 1, iter: 2', out), out[-3000:]
    assert re.search(r'Epoch\(train\)\s+\[2\]\[1/2\]', out)
    assert not re.search(r'Epoch\(train\)\s+\[1\]\[1/2\]', out)
    second = torch.load(work / 'epoch_2.pth', weights_only=False)
    assert second['meta']['iter'] == 4
    step = next(iter(second['optimizer']['state'].values()))['step']
    assert float(step) == 4  # AdamW kept counting from the restored state
    assert 'coco/bbox_mAP' in out  # validation at the end of epoch 2

    # 3. tools/test.py evaluates the saved checkpoint (loaded through the allow-list)
    out = run_tool(['tools/test.py', str(config), str(work / 'epoch_2.pth'),
                    '--work-dir', str(root / 'test'), '--out', str(root / 'results.pkl'),
                    '--show-dir', 'vis', '--cfg-options', *NUM_CLASSES])
    assert re.search(r'coco/bbox_mAP: [0-9.]+', out) and re.search(r'coco/segm_mAP: [0-9.]+', out)
    assert (root / 'results.pkl').stat().st_size > 0
    assert list((root / 'test').rglob('vis/*.jpg'))


def test_dist_train_sh_runs_two_cpu_processes_under_torchrun(setup):
    root, config = setup
    out = run_tool([str(config), '2', '--work-dir', str(root / 'dist'),
                    '--cfg-options', 'model.backbone.init_cfg=None', 'train_cfg.max_epochs=2',
                    'val_cfg=None', 'val_dataloader=None', 'val_evaluator=None', *NUM_CLASSES],
                   script='tools/dist_train.sh')
    [log] = (root / 'dist').glob('*/*.log')
    log = log.read_text()
    assert 'Distributed launcher: pytorch' in log and 'Distributed training: True' in log
    # 4 images, 2 per batch, shared by 2 processes: one iteration per epoch on each, 2 epochs
    assert re.search(r'Epoch\(train\)\s+\[1\]\[1/1\]', log)
    assert re.search(r'Epoch\(train\)\s+\[2\]\[1/1\]', log)
    assert 'SyncBN layers built as BN' in out
    losses = logged_losses(log)
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert torch.load(root / 'dist' / 'epoch_2.pth', weights_only=False)['meta']['iter'] == 2


def test_compile_config_key_traces_the_backbone_over_changing_sizes(setup):
    """``compile`` with torch.compile options: Dynamo traces the backbone (backend 'eager', no
    code generation) through multi-scale training batches of changing sizes, where MMEngine's
    own whole-``train_step`` compile fails in its optimizer wrapper."""
    root, config = setup
    out = run_tool(['tools/train.py', str(config), '--work-dir', str(root / 'compiled'),
                    '--cfg-options', 'model.backbone.init_cfg=None', 'compile.backend=eager',
                    'compile.dynamic=True', 'train_cfg.max_epochs=1', 'val_cfg=None',
                    'val_dataloader=None', 'val_evaluator=None', *NUM_CLASSES])
    assert "torch.compile(backend='eager', dynamic=True)" in out
    losses = logged_losses(out)
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))


def test_no_detection_at_all_prints_zero_tables_and_names_the_threshold(setup):
    """An (untrained) detector whose every score falls below the threshold: MMDetection's
    CocoMetric alone logs "The testing results of the whole dataset is empty" and no metrics."""
    from mmengine.config import Config

    from mmswinv2.launch import build_model
    root, config = setup
    cfg = Config.fromfile(str(config))
    cfg.merge_from_dict({option.split('=')[0]: 4 for option in NUM_CLASSES})
    cfg.model.backbone.init_cfg = None
    checkpoint = root / 'untrained.pth'
    torch.save(dict(state_dict=build_model(cfg, 'mmdet').state_dict()), checkpoint)
    out = run_tool(['tools/test.py', str(config), str(checkpoint), '--work-dir',
                    str(root / 'empty'), '--cfg-options', *NUM_CLASSES,
                    'model.test_cfg.rcnn.score_thr=1.0'])
    for iou_type in ('bbox', 'segm'):
        assert f'Evaluate annotation type *{iou_type}*: no predictions' in out
    assert out.count('Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | '
                     'maxDets=100 ] = 0.000') == 2
    assert 'every score was below model.test_cfg.rcnn.score_thr = 1.0' in out
    assert re.search(r'coco/bbox_mAP: 0\.0+ ', out) and re.search(r'coco/segm_mAP_50: 0\.0+', out)
