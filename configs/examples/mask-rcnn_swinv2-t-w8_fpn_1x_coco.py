# Mask R-CNN + FPN with a SwinV2-T backbone: the minimal mmdet config for mmswinv2.
# Run from this repository (or with mmswinv2 installed): python tools/train.py THIS_FILE
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['mmswinv2'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='mmswinv2.SwinTransformerV2',  # plain 'SwinTransformerV2' works too
        arch='tiny',                       # embed dims 96, depths (2, 2, 6, 2)
        window_size=8,                     # pretrained windows: read from the checkpoint
        drop_path_rate=0.2,
        out_indices=(0, 1, 2, 3),
        with_cp=False,
        init_cfg=None),  # dict(type='Pretrained', checkpoint='path/to/swinv2.pth')
    neck=dict(in_channels=[96, 192, 384, 768]))
