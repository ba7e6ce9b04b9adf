# High resolution: 640x640 crops (test scale 2560x640) with 16x16 windows transferred from the
# window-8 checkpoint (pretrained_window_sizes=8 keeps the position-bias coordinates it was
# trained with). For a 12to16 checkpoint use pretrained_window_sizes=(12, 12, 12, 6).
_base_ = './upernet_swinv2_tiny_ade20k.py'

crop_size = (640, 640)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(window_size=16, pretrained_window_sizes=(8, 8, 8, 8)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='mmswinv2.CheckSegAnnotation', num_classes=150),
    dict(type='RandomResize', scale=(2560, 640), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2560, 640), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='mmswinv2.CheckSegAnnotation', num_classes=150),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
