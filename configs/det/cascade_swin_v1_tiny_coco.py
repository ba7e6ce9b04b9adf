# Baseline: the same Cascade Mask R-CNN 3x recipe on Swin V1-T, MMDetection's own
# SwinTransformer (published: 50.4 box / 43.7 mask AP), for side-by-side comparison.
# Weights: the official swin_tiny_patch4_window7_224.pth converted with
#   python tools/convert_checkpoint.py swin_tiny_patch4_window7_224.pth checkpoints/swin_v1_tiny_mmdet.pth
# (or HF / timm Swin V1 files), loaded with convert_weights=False.
_base_ = './cascade_swinv2_tiny_coco.py'

pretrained = 'checkpoints/swin_v1_tiny_mmdet.pth'

model = dict(
    backbone=dict(
        _delete_=True,
        type='SwinTransformer',
        embed_dims=96,
        depths=[2, 2, 6, 2],
        num_heads=[3, 6, 12, 24],
        window_size=7,
        mlp_ratio=4,
        qkv_bias=True,
        qk_scale=None,
        drop_rate=0.,
        attn_drop_rate=0.,
        drop_path_rate=0.2,
        patch_norm=True,
        out_indices=(0, 1, 2, 3),
        with_cp=False,
        convert_weights=False,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)))

# The published Swin V1 weight-decay exclusions.
optim_wrapper = dict(paramwise_cfg=dict(
    _delete_=True,
    custom_keys={
        'absolute_pos_embed': dict(decay_mult=0.),
        'relative_position_bias_table': dict(decay_mult=0.),
        'norm': dict(decay_mult=0.),
    }))
