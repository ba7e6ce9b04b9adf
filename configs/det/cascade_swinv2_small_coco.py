# Cascade Mask R-CNN SwinV2-S, 3x (official Swin-S recipe: drop path 0.2; V1 reached 51.9 / 45.0).
_base_ = './cascade_swinv2_tiny_coco.py'

pretrained = 'checkpoints/swinv2_small_patch4_window8_256.pth'

model = dict(backbone=dict(
    arch='small', drop_path_rate=0.2,
    init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
