# UperNet SwinV2-S, ADE20K 512x512, 160k (Swin-S recipe: drop path 0.3; V1: 47.64 / 49.47 mIoU).
_base_ = './upernet_swinv2_tiny_ade20k.py'

pretrained = 'checkpoints/swinv2_small_patch4_window8_256.pth'

model = dict(backbone=dict(arch='small',
                           init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
