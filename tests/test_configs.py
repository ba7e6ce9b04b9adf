"""Every config under configs/ builds its model and runs one inference step on CPU."""
import glob
import os

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

ROOT = os.path.join(os.path.dirname(__file__), '..')
DET = sorted(glob.glob(os.path.join(ROOT, 'configs', 'det', '*.py')))
SEG = sorted(glob.glob(os.path.join(ROOT, 'configs', 'seg', '*.py')))


def build(path, scope):
    from mmswinv2.launch import build_model
    cfg = Config.fromfile(path)
    model = build_model(cfg, scope)
    model.eval()
    return cfg, model


def image(h=96, w=128):
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize('path', DET, ids=os.path.basename)
def test_detection_config_builds_and_predicts(path):
    from mmdet.structures import DetDataSample
    cfg, model = build(path, 'mmdet')
    assert cfg.default_scope == 'mmdet'
    sample = DetDataSample(metainfo=dict(img_shape=(96, 128), ori_shape=(96, 128),
                                         scale_factor=(1., 1.)))
    with torch.no_grad():
        [result] = model.test_step(dict(inputs=[image()], data_samples=[sample]))
    assert {'bboxes', 'scores', 'labels', 'masks'} <= set(result.pred_instances.keys())


@pytest.mark.parametrize('path', SEG, ids=os.path.basename)
def test_segmentation_config_builds_and_predicts(path):
    from mmseg.structures import SegDataSample
    cfg, model = build(path, 'mmseg')
    assert cfg.default_scope == 'mmseg'
    sample = SegDataSample(metainfo=dict(img_shape=(96, 128), ori_shape=(96, 128)))
    with torch.no_grad():
        [result] = model.test_step(dict(inputs=[image()], data_samples=[sample]))
    assert tuple(result.pred_sem_seg.data.shape) == (1, 96, 128)
    assert result.seg_logits.data.shape[0] == cfg.model.decode_head.num_classes


def test_sliding_window_segmentation_by_option():
    """The --cfg-options for slide inference on large images (docs/recipes.md)."""
    from mmseg.structures import SegDataSample
    path = os.path.join(ROOT, 'configs', 'seg', 'upernet_swinv2_tiny_ade20k.py')
    cfg = Config.fromfile(path)
    cfg.merge_from_dict({'model.test_cfg.mode': 'slide', 'model.test_cfg.crop_size': (64, 64),
                         'model.test_cfg.stride': (48, 48)})
    from mmswinv2.launch import build_model
    model = build_model(cfg, 'mmseg').eval()
    sample = SegDataSample(metainfo=dict(img_shape=(96, 128), ori_shape=(96, 128)))
    with torch.no_grad():
        [result] = model.test_step(dict(inputs=[image()], data_samples=[sample]))
    assert model.test_cfg.mode == 'slide'
    assert tuple(result.pred_sem_seg.data.shape) == (1, 96, 128)


def param_groups(path, scope):
    """The config and, per parameter name, the optimizer param group mmengine builds for it."""
    from mmengine.optim import build_optim_wrapper
    cfg, model = build(path, scope)
    with DefaultScope.overwrite_default_scope(scope):
        optimizer = build_optim_wrapper(model, cfg.optim_wrapper).optimizer
    names = {id(p): n for n, p in model.named_parameters()}
    groups = {names[id(p)]: group for group in optimizer.param_groups for p in group['params']}
    assert len(groups) == len(names)  # every parameter is in a group
    return cfg, groups


@pytest.mark.parametrize('path', [p for p in DET + SEG if 'swinv2' in p], ids=os.path.basename)
def test_swinv2_weight_decay_groups(path):
    """SwinV2's exclusions, as mmengine's optimizer constructor builds them from the config."""
    cfg, groups = param_groups(path, 'mmdet' if '/det/' in path else 'mmseg')
    decay = {name: group['weight_decay'] for name, group in groups.items()}
    base = cfg.optim_wrapper.optimizer.weight_decay
    block = 'backbone.stages.0.blocks.0.'
    assert decay[block + 'attn.qkv.weight'] == base and decay[block + 'mlp.fc1.weight'] == base
    for name in ('attn.logit_scale', 'attn.cpb_mlp.0.weight', 'attn.cpb_mlp.2.weight',
                 'attn.q_bias', 'attn.v_bias', 'norm1.weight', 'mlp.fc1.bias'):
        assert decay[block + name] == 0, name
    assert decay['backbone.norm0.weight'] == 0


@pytest.mark.parametrize('path, override, message', [
    ('det/cascade_swinv2_base_coco.py', {'model.neck.in_channels': [96, 192, 384, 768]},
     "model.neck.in_channels [96, 192, 384, 768] do not match model.backbone "
     "(mmswinv2.SwinTransformerV2, arch 'base', out_indices [0, 1, 2, 3]) outputs channels "
     "[128, 256, 512, 1024]"),
    ('seg/upernet_swinv2_tiny_ade20k.py', {'model.auxiliary_head.in_channels': 512},
     'model.auxiliary_head.in_channels 512 do not match model.backbone'),
])
def test_backbone_neck_channel_mismatch_fails_before_building(tmp_path, path, override, message):
    from mmswinv2.launch import load_config
    with pytest.raises(ValueError) as err:
        load_config(os.path.join(ROOT, 'configs', path), override, str(tmp_path), 'none')
    assert message in str(err.value)


def test_dataset_classes_differing_from_the_heads_fail_before_building(tmp_path):
    """A 3-class dataset with the 80-class cascade config: MMDetection would train, then fail
    at its first evaluation with an IndexError inside CocoMetric."""
    from mmswinv2.launch import load_config
    path = os.path.join(ROOT, 'configs', 'det', 'cascade_swinv2_tiny_coco.py')
    three = {f'{loader}.dataset.metainfo': dict(classes=('cat', 'dog', 'bird'))
             for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')}
    with pytest.raises(ValueError) as err:
        load_config(path, three, str(tmp_path), 'none')
    message = str(err.value)
    assert ('the dataset has 3 classes (train_dataloader.dataset.metainfo.classes) but '
            'model.roi_head.bbox_head.0.num_classes = 80') in message
    assert 'model.roi_head.mask_head.num_classes = 80' in message
    assert '--cfg-options model.roi_head.bbox_head.0.num_classes=3' in message
    heads = {f'model.roi_head.bbox_head.{i}.num_classes': 3 for i in range(3)}
    load_config(path, {**three, **heads, 'model.roi_head.mask_head.num_classes': 3},
                str(tmp_path), 'none')


def test_segmentation_dataset_type_classes_are_checked_too(tmp_path):
    """Without metainfo the dataset type's own classes count (ADE20K: 150)."""
    from mmswinv2.launch import load_config
    path = os.path.join(ROOT, 'configs', 'seg', 'upernet_swinv2_tiny_ade20k.py')
    with pytest.raises(ValueError, match=r'the dataset has 150 classes \(train_dataloader'
                                         r'\.dataset: ADE20KDataset\'s own classes\) but '
                                         r'model\.decode_head\.num_classes = 19'):
        load_config(path, {'model.decode_head.num_classes': 19}, str(tmp_path), 'none')


def test_layer_decay_groups_follow_the_official_swin_rule():
    """configs/seg/upernet_swinv2_tiny_w16_ade20k.py: lr 4e-5 x 0.95 ** (13 - layer), where
    depths (2, 2, 6, 2) make 12 layers; patch embedding 0; block j of stage i
    sum(depths[:i]) + j + 1; the merging starting stage i, sum(depths[:i]); the rest 13.
    Weight decay 0.05, none on 1-D parameters, cpb_mlp and logit_scale."""
    _, groups = param_groups(
        os.path.join(ROOT, 'configs', 'seg', 'upernet_swinv2_tiny_w16_ade20k.py'), 'mmseg')
    expected = {  # name: (layer, weight decay)
        'backbone.patch_embed.proj.weight': (0, 0.05),
        'backbone.patch_embed.norm.weight': (0, 0.0),
        'backbone.stages.0.blocks.0.attn.qkv.weight': (1, 0.05),
        'backbone.stages.0.blocks.1.attn.logit_scale': (2, 0.0),
        'backbone.stages.1.downsample.reduction.weight': (2, 0.05),
        'backbone.stages.2.downsample.norm.bias': (4, 0.0),
        'backbone.stages.2.blocks.5.mlp.fc1.weight': (10, 0.05),
        'backbone.stages.2.blocks.5.mlp.fc1.bias': (10, 0.0),
        'backbone.stages.3.blocks.1.attn.cpb_mlp.0.weight': (12, 0.0),
        'backbone.norm3.weight': (13, 0.0),
        'decode_head.conv_seg.weight': (13, 0.05),
        'auxiliary_head.convs.0.conv.weight': (13, 0.05),
    }
    for name, (layer, weight_decay) in expected.items():
        assert groups[name]['lr'] == pytest.approx(4e-5 * 0.95 ** (13 - layer)), name
        assert groups[name]['weight_decay'] == weight_decay, name


def test_layer_decay_on_swin_v1_puts_merging_with_the_stage_it_ends():
    """mmdet's / mmseg's Swin V1 merges at the end of a stage, as the official code does."""
    from mmswinv2.optim import swin_layer_id
    depths = [2, 2, 6, 2]
    assert swin_layer_id('backbone.stages.0.downsample.reduction.weight', depths, False) == 2
    assert swin_layer_id('backbone.stages.1.downsample.reduction.weight', depths, True) == 2
    assert swin_layer_id('backbone.stages.2.downsample.norm.weight', depths, False) == 10


@pytest.mark.parametrize('rate', [0, 1.5, None, 'x'])
def test_layer_decay_rate_must_be_in_0_1(rate):
    from mmswinv2.optim import SwinLayerDecayOptimWrapperConstructor
    with pytest.raises(ValueError, match='paramwise_cfg.layer_decay_rate must be a number in'):
        SwinLayerDecayOptimWrapperConstructor(
            dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-4)),
            dict(layer_decay_rate=rate))
