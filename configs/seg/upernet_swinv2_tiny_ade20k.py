# UperNet + FCN auxiliary head, SwinV2-T backbone, ADE20K, 512x512 crops, 160k iterations.
# The Swin-T ADE20K recipe (44.51 / 45.81 mIoU with Swin V1-T): AdamW lr 6e-5 wd 0.01, linear
# warm-up 1500 iterations then poly to 0, 2 images x 8 GPUs, drop path 0.3, whole-image test.
# MMSegmentation's Swin-T UperNet config carries that recipe; this file replaces its backbone
# and the weight-decay exclusions (SwinV2's, as in detection).
#
# Pretrained weights: any format tools/convert_checkpoint.py reads, converted on the fly:
#   --cfg-options model.backbone.init_cfg.checkpoint=PATH
# Multi-scale + flip test: tools/test.py CONFIG CKPT --tta (mmseg's SegTTAModel).
# Sliding-window test for large images:
#   --cfg-options model.test_cfg.mode=slide model.test_cfg.crop_size="(512,512)" \
#                 model.test_cfg.stride="(341,341)"
_base_ = [
    'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py',
    '../_base_/swinv2.py',
]

pretrained = 'checkpoints/swinv2_tiny_patch4_window8_256.pth'

custom_imports = dict(imports=['mmswinv2'], allow_failed_imports=False)
# Checkpoints written whole (a run killed mid-write never leaves a half-written resume point),
# carrying the torch random state that --resume restores, and a clear stop, naming iteration,
# loss terms and lr, when the loss is not finite.
default_hooks = dict(checkpoint=dict(type='mmswinv2.AtomicCheckpointHook'),
                     random_state=dict(type='mmswinv2.RandomStateHook'),
                     finite_loss=dict(type='mmswinv2.NonFiniteLossHook'))

model = dict(
    backbone=dict(
        _delete_=True,
        type='mmswinv2.SwinTransformerV2',
        arch='tiny',
        window_size=8,
        # pretrained_window_sizes not set: taken from the checkpoint where it records them
        drop_path_rate=0.3,
        out_indices=(0, 1, 2, 3),
        with_cp=False,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))

# mmseg's ADE20K pipelines, plus a check that names the file when a label map does not match
# its image or holds labels outside the classes (mmseg would fail later without naming it).
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='mmswinv2.CheckSegAnnotation', num_classes=150),
    dict(type='RandomResize', scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size={{_base_.crop_size}}, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 512), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='mmswinv2.CheckSegAnnotation', num_classes=150),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=0.00006, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg={{_base_.swinv2_paramwise_cfg}})
