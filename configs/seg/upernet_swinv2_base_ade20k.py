# UperNet SwinV2-B, ADE20K 512x512, 160k (Swin-B recipe: drop path 0.3; V1: 48.13 / 49.72 mIoU).
_base_ = './upernet_swinv2_tiny_ade20k.py'

pretrained = 'checkpoints/swinv2_base_patch4_window8_256.pth'

model = dict(
    backbone=dict(arch='base', init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512))
