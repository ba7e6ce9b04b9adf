# Cascade Mask R-CNN SwinV2-B, 3x (official Swin-B recipe: drop path 0.3; V1 reached 51.9 / 45.0).
_base_ = './cascade_swinv2_tiny_coco.py'

pretrained = 'checkpoints/swinv2_base_patch4_window8_256.pth'

model = dict(
    backbone=dict(
        arch='base', drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[128, 256, 512, 1024]))
