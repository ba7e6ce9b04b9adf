# The SwinV2 paper's ADE20K setting (arXiv 2111.09883, Table 1, SwinV2-T pre-trained at 256 px /
# window 8): UperNet, 512x512 crops, window 16 transferred from the window-8 checkpoint, AdamW
# lr 4e-5 / wd 0.05, 1,500 warm-up iterations then linear decay, 160k iterations, 16 images
# (2 x 8 GPUs), drop path 0.3, layer-wise lr decay 0.95 (the official Swin rule:
# mmswinv2.SwinLayerDecayOptimWrapperConstructor). Published: 47.0 mIoU at window 16 (47.7 at
# 20, 47.8 at 32); not reproduced here.
_base_ = './upernet_swinv2_tiny_ade20k.py'

model = dict(backbone=dict(window_size=16, pretrained_window_sizes=(8, 8, 8, 8)))

# SwinV2's weight-decay exclusions (flat_decay_mult, custom_keys) come from the base config.
optim_wrapper = dict(
    constructor='mmswinv2.SwinLayerDecayOptimWrapperConstructor',
    optimizer=dict(lr=4e-5, weight_decay=0.05),
    paramwise_cfg=dict(layer_decay_rate=0.95))
