"""The backbone builds through MMDetection's and MMSegmentation's registries and configs."""
import os

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

import mmswinv2

CONFIGS = os.path.join(os.path.dirname(__file__), '..', 'configs', 'examples')


def build_in_scope(scope, cfg):
    registry = {'mmdet': 'mmdet.registry', 'mmseg': 'mmseg.registry'}[scope]
    MODELS = __import__(registry, fromlist=['MODELS']).MODELS
    with DefaultScope.overwrite_default_scope(scope):
        return MODELS.build(cfg)


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
@pytest.mark.parametrize('type_name', ['mmswinv2.SwinTransformerV2', 'SwinTransformerV2'])
def test_backbone_builds_from_codebase_registry(scope, type_name):
    backbone = build_in_scope(scope, dict(type=type_name, arch='tiny', window_size=[8, 8, 8, 4],
                                          out_indices=(1, 2, 3)))
    assert isinstance(backbone, mmswinv2.SwinTransformerV2)
    assert backbone.window_sizes == (8, 8, 8, 4) and backbone.out_indices == (1, 2, 3)


def test_mmdet_example_config_builds_detector_and_extracts_fpn_features():
    cfg = Config.fromfile(os.path.join(CONFIGS, 'mask-rcnn_swinv2-t-w8_fpn_1x_coco.py'))
    detector = build_in_scope('mmdet', cfg.model).eval()
    assert isinstance(detector.backbone, mmswinv2.SwinTransformerV2)
    with torch.no_grad():
        feats = detector.extract_feat(torch.randn(1, 3, 100, 140))
    assert [tuple(f.shape) for f in feats] == [(1, 256, 25, 35), (1, 256, 13, 18),
                                               (1, 256, 7, 9), (1, 256, 4, 5), (1, 256, 2, 3)]


def test_mmseg_example_config_builds_upernet_and_decodes():
    cfg = Config.fromfile(os.path.join(CONFIGS, 'upernet_swinv2-t-w8_512x512_ade20k.py'))
    segmentor = build_in_scope('mmseg', cfg.model).eval()
    assert isinstance(segmentor.backbone, mmswinv2.SwinTransformerV2)
    with torch.no_grad():
        logits = segmentor.decode_head(segmentor.extract_feat(torch.randn(1, 3, 96, 96)))
    assert tuple(logits.shape) == (1, 150, 24, 24)


@pytest.mark.parametrize('scope, base', [
    ('mmdet', 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'),
    ('mmseg', 'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py'),
])
def test_plain_type_resolves_through_custom_imports_alone(tmp_path, scope, base):
    """A fresh interpreter that never imported mmswinv2: only the config's custom_imports can
    make the plain name resolve."""
    import subprocess
    import sys
    config = tmp_path / 'my_config.py'
    config.write_text(
        f"_base_ = '{base}'\n"
        "custom_imports = dict(imports=['mmswinv2'], allow_failed_imports=False)\n"
        "model = dict(backbone=dict(_delete_=True, type='SwinTransformerV2', arch='tiny'))\n")
    script = (
        'import sys\n'
        'from mmengine.config import Config\n'
        'from mmengine.registry import DefaultScope\n'
        f'from {scope}.registry import MODELS\n'
        "assert 'mmswinv2' not in sys.modules\n"
        f'cfg = Config.fromfile({str(config)!r})\n'
        f"with DefaultScope.overwrite_default_scope('{scope}'):\n"
        '    backbone = MODELS.build(cfg.model.backbone)\n'
        'print(type(backbone).__module__, type(backbone).__name__)\n')
    root = os.path.join(os.path.dirname(__file__), '..')
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                            cwd=root, env={**os.environ, 'PYTHONPATH': root})
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'mmswinv2.models.swin_transformer_v2 SwinTransformerV2' in result.stdout
