# Demo: the real Mask R-CNN SwinV2 3x config on the embedded shapes dataset
# (tools/make_demo_data.py), sized for a 2-core CPU and about 9 minutes of training.
# (Mask R-CNN rather than Cascade: its heads cost half as much per step on CPU, which doubles
# the iterations the budget allows; the Cascade config runs end to end in the tests.)
# Changed from mask_rcnn_swinv2_tiny_coco_3x.py, and why:
#   data      4 classes, data/demo/coco, images ~256 px (the scenes are 224-416 px)
#   backbone  SwinV2 reduced to 48 dims x 2 blocks per stage, trained from scratch (no weights
#             can be downloaded here), without drop path (a short schedule underfits)
#   CPU       neck and heads 128 channels and a 512-wide box head (256 / 1024 in the recipe),
#             RoIAlign with 2x2 samples per bin (adaptive in the recipe), 64 sampled RoIs per
#             image (512; the scenes hold 2-6 objects) and 300 proposals (1000): a training
#             step costs ~1 s instead of ~3.3 s
#   schedule  10 epochs of 48 iterations, lr 4e-4 (from scratch, batch 2) divided by 10 after
#             epoch 8, validation every 5 epochs
_base_ = './mask_rcnn_swinv2_tiny_coco_3x.py'

data_root = 'data/demo/coco/'
classes = ('disc', 'box', 'triangle', 'star')
metainfo = dict(classes=classes,
                palette=[(230, 60, 60), (60, 160, 230), (240, 200, 40), (90, 200, 90)])

_channels = 128  # neck and heads (256 in the recipe)
model = dict(
    backbone=dict(
        arch=dict(_delete_=True, embed_dims=48, depths=[2, 2, 2, 2], num_heads=[3, 6, 12, 24]),
        drop_path_rate=0.0,
        init_cfg=None),
    neck=dict(in_channels=[48, 96, 192, 384], out_channels=_channels),
    rpn_head=dict(in_channels=_channels, feat_channels=_channels),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=_channels, roi_layer=dict(sampling_ratio=2)),
        bbox_head=dict(in_channels=_channels, fc_out_channels=512, num_classes=len(classes)),
        mask_roi_extractor=dict(out_channels=_channels, roi_layer=dict(sampling_ratio=2)),
        mask_head=dict(in_channels=_channels, conv_out_channels=_channels,
                       num_classes=len(classes))),
    train_cfg=dict(rpn_proposal=dict(nms_pre=1000, max_per_img=300),
                   rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(rpn=dict(nms_pre=1000, max_per_img=300)))

_scales = [(192, 320), (224, 352), (256, 384), (288, 416)]
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='RandomChoice', transforms=[
        [dict(type='RandomChoiceResize', scales=_scales, keep_ratio=True)],
        [dict(type='RandomChoiceResize', scales=[(160, 416), (192, 416), (224, 416)],
              keep_ratio=True),
         dict(type='RandomCrop', crop_type='absolute_range', crop_size=(128, 224),
              allow_negative_crop=True),
         dict(type='RandomChoiceResize', scales=_scales, keep_ratio=True)]]),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(256, 384), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                                          'scale_factor')),
]
train_dataloader = dict(
    batch_size=2, num_workers=1,
    dataset=dict(data_root=data_root, metainfo=metainfo,
                 ann_file='annotations/instances_train.json', data_prefix=dict(img='train/'),
                 pipeline=train_pipeline))
val_dataloader = dict(
    num_workers=1,
    dataset=dict(data_root=data_root, metainfo=metainfo,
                 ann_file='annotations/instances_val.json', data_prefix=dict(img='val/'),
                 pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator

max_epochs = 10
train_cfg = dict(max_epochs=max_epochs, val_interval=5)
optim_wrapper = dict(optimizer=dict(lr=0.0004))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[8],
         gamma=0.1),
]
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=max_epochs))
