# Mask R-CNN + FPN, SwinV2-T, 3x multi-scale-crop schedule: MMDetection's Swin-T recipe
# (46.0 box / 41.6 mask AP with Swin V1-T) with the SwinV2 backbone and weight decay.
_base_ = [
    'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py',
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
        drop_path_rate=0.2,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg={{_base_.swinv2_paramwise_cfg}})
auto_scale_lr = dict(enable=False, base_batch_size=16)

# MMDetection's CocoDataset, with annotations whose polygon list is empty ignored instead of
# failing with a KeyError that names no file.
train_dataloader = dict(dataset=dict(type='mmswinv2.CocoDataset'))
val_dataloader = dict(dataset=dict(type='mmswinv2.CocoDataset'))
test_dataloader = val_dataloader
