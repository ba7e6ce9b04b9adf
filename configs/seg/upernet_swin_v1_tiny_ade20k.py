# Baseline: MMSegmentation's own UperNet Swin V1-T recipe (published 44.51 / 45.81 mIoU), run
# through the same tools. Weights: the official swin_tiny_patch4_window7_224.pth (or HF / timm
# Swin V1) converted with
#   python tools/convert_checkpoint.py swin_tiny_patch4_window7_224.pth checkpoints/swin_v1_tiny_mmdet.pth
_base_ = 'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py'

pretrained = 'checkpoints/swin_v1_tiny_mmdet.pth'

model = dict(backbone=dict(init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
