# Cascade Mask R-CNN SwinV2-T with 16x16 windows, transferred from the window-8 checkpoint:
# the position-bias MLP keeps the coordinates it was pretrained with (pretrained_window_sizes=8),
# so the wider windows extrapolate the log-spaced bias (SwinV2's resolution transfer).
# For a 12to16 checkpoint use pretrained_window_sizes=(12, 12, 12, 6).
_base_ = './cascade_swinv2_tiny_coco.py'

model = dict(backbone=dict(window_size=16, pretrained_window_sizes=(8, 8, 8, 8)))
