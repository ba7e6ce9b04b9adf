# SwinV2-L in the paper's system-level ADE20K setting (see upernet_swinv2_base_w40_640_ade20k.py):
# 640x640, window 40 from the 22K 192 px / window 12 checkpoint, 40k iterations, 64 images.
_base_ = './upernet_swinv2_base_w40_640_ade20k.py'

pretrained = 'checkpoints/swinv2_large_patch4_window12_192_22k.pth'

model = dict(
    backbone=dict(arch='large', init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[192, 384, 768, 1536]),
    auxiliary_head=dict(in_channels=768))
