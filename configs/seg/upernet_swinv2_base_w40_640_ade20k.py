# The SwinV2 paper's system-level ADE20K setting (arXiv 2111.09883, appendix A2) for SwinV2-B:
# UperNet, 640x640 crops, window 40 transferred from the ImageNet-22K checkpoint pre-trained at
# 192 px / window 12 (its position bias saw windows (12, 12, 12, 6): stage 4 was a 6x6 map),
# AdamW lr 6e-5 / wd 0.05, 375 warm-up iterations then linear decay, 40k iterations, 64 images
# (8 x 8 GPUs), drop path 0.3. At 640 px the stage maps are 160, 80, 40 and 20: stage 3 is one
# 40x40 window, stage 4 one 20x20 window. Published for SwinV2-G only (59.1 mIoU); the B/L
# numbers of this setting are not given in the paper, and nothing here was reproduced.
_base_ = './upernet_swinv2_tiny_w16_640_ade20k.py'

pretrained = 'checkpoints/swinv2_base_patch4_window12_192_22k.pth'

model = dict(
    backbone=dict(
        arch='base', window_size=40, pretrained_window_sizes=(12, 12, 12, 6),
        drop_path_rate=0.3, init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512))

train_dataloader = dict(batch_size=8)  # x 8 GPUs = 64

optim_wrapper = dict(optimizer=dict(lr=6e-5, weight_decay=0.05))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=375),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=375, end=40000),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=40000, val_interval=4000)
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=4000))
auto_scale_lr = dict(enable=False, base_batch_size=64)
