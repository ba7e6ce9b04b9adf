# Demo: the real UperNet SwinV2 config on the embedded shapes dataset (ADE20K layout, made by
# tools/make_demo_data.py), sized for a 2-core CPU and about 4.5 minutes of training.
# Changed from upernet_swinv2_tiny_ade20k.py, and why:
#   data      5 classes (background + 4 shapes; 0 = unlabeled, reduce_zero_label as ADE20K),
#             data/demo/ade, 192x192 crops from ~256 px images
#   backbone  SwinV2 reduced to 48 dims x 2 blocks per stage, trained from scratch (no weights
#             can be downloaded here), without drop path (a short schedule underfits)
#   CPU       decode head 128 channels, auxiliary head 64 (512 / 256 in the recipe)
#   schedule  400 iterations of 4 crops, lr 3e-4 (from scratch), warm-up 50, poly
_base_ = './upernet_swinv2_tiny_ade20k.py'

data_root = 'data/demo/ade'
classes = ('background', 'disc', 'box', 'triangle', 'star')
metainfo = dict(classes=classes,
                palette=[[70, 70, 70], [230, 60, 60], [60, 160, 230], [240, 200, 40],
                         [90, 200, 90]])
crop_size = (192, 192)

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        arch=dict(_delete_=True, embed_dims=48, depths=[2, 2, 2, 2], num_heads=[3, 6, 12, 24]),
        drop_path_rate=0.0,
        init_cfg=None),
    decode_head=dict(in_channels=[48, 96, 192, 384], channels=128,
                     num_classes=len(classes)),
    auxiliary_head=dict(in_channels=192, channels=64, num_classes=len(classes)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='mmswinv2.CheckSegAnnotation', num_classes=len(classes)),
    dict(type='RandomResize', scale=(384, 256), ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(384, 256), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='mmswinv2.CheckSegAnnotation', num_classes=len(classes)),
    dict(type='PackSegInputs'),
]
_dataset = dict(type='BaseSegDataset', data_root=data_root, metainfo=metainfo,
                img_suffix='.jpg', seg_map_suffix='.png', reduce_zero_label=True)
train_dataloader = dict(
    batch_size=4, num_workers=1,
    dataset=dict(_dataset, data_prefix=dict(img_path='images/training',
                                            seg_map_path='annotations/training'),
                 pipeline=train_pipeline))
val_dataloader = dict(
    num_workers=1,
    dataset=dict(_dataset, data_prefix=dict(img_path='images/validation',
                                            seg_map_path='annotations/validation'),
                 pipeline=test_pipeline))
test_dataloader = val_dataloader

max_iters = 400
train_cfg = dict(max_iters=max_iters, val_interval=200)
optim_wrapper = dict(optimizer=dict(lr=0.0003))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=50),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=50, end=max_iters, by_epoch=False),
]
default_hooks = dict(logger=dict(interval=20),
                     checkpoint=dict(by_epoch=False, interval=max_iters))
# Pictures: class colours at half opacity, so that the scene stays visible under them (0.8 by
# default, which hides the image under the background class).
visualizer = dict(alpha=0.5)
