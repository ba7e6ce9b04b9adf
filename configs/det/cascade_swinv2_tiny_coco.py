# Cascade Mask R-CNN + FPN, SwinV2-T backbone, COCO, 3x schedule.
# The official Swin-T Cascade Mask R-CNN 3x recipe (50.4 box / 43.7 mask AP with Swin V1-T):
# 4conv1fc GIoU box heads, DETR-style multi-scale 480-800 training with the crop branch,
# AdamW lr 1e-4 wd 0.05, 36 epochs with steps at 27 and 33, 2 images x 8 GPUs, drop path 0.2.
# MMDetection's ConvNeXt-T cascade config carries exactly that head/pipeline/schedule recipe;
# this file replaces its backbone and optimizer.
#
# Pretrained weights: any format tools/convert_checkpoint.py reads (official .pth, HF folder,
# timm, mmpretrain, ...), converted on the fly. Set `pretrained` or pass
#   --cfg-options model.backbone.init_cfg.checkpoint=PATH
# AMP (the official recipe trained in fp16): tools/train.py --amp.
_base_ = [
    'mmdet::convnext/cascade-mask-rcnn_convnext-t-p4-w7_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py',
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
        drop_path_rate=0.2,
        out_indices=(0, 1, 2, 3),
        with_cp=False,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg={{_base_.swinv2_paramwise_cfg}})

# 8 GPUs x 2 images; tools/train.py --auto-scale-lr rescales lr for other totals.
auto_scale_lr = dict(enable=False, base_batch_size=16)

# MMDetection's CocoDataset, with annotations whose polygon list is empty ignored instead of
# failing with a KeyError that names no file.
train_dataloader = dict(dataset=dict(type='mmswinv2.CocoDataset'))
val_dataloader = dict(dataset=dict(type='mmswinv2.CocoDataset'))
test_dataloader = val_dataloader
