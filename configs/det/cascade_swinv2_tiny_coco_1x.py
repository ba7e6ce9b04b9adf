# Cascade Mask R-CNN SwinV2-T, 1x schedule (12 epochs, steps at 8 and 11). Same multi-scale
# training as 3x; drop path 0.0 as in the official Swin-T cascade 1x recipe (48.1 / 41.7 AP, V1).
_base_ = './cascade_swinv2_tiny_coco.py'

model = dict(backbone=dict(drop_path_rate=0.0))

max_epochs = 12
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[8, 11],
         gamma=0.1),
]
