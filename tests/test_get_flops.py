"""tools/analysis/get_flops.py against the published model-card counts and an exact formula."""
import os

import pytest

from helpers import load_tool

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
get_flops = load_tool('analysis/get_flops.py')


def config(path):
    return os.path.join(ROOT, 'configs', path)


@pytest.mark.parametrize('path, size, params, gmacs', [
    # timm's swinv2_tiny_window8_256 model card: 28.35 M parameters, 5.96 GMACs
    ('det/cascade_swinv2_tiny_coco.py', 256, 28.35e6, 5.96e9),
    # Swin-T (V1) model card: 28.3 M parameters, 4.5 G(MACs), window 7 at 224
    ('det/cascade_swin_v1_tiny_coco.py', 224, 28.3e6, 4.5e9),
])
def test_imagenet_classifier_counts_match_the_model_cards(path, size, params, gmacs, capsys):
    result = get_flops.main([config(path), '--backbone-only', '--num-classes', '1000',
                             '--shape', str(size)])
    assert abs(result['params'][''] - params) <= 0.01 * params
    assert abs(result['macs'][''] - gmacs) <= 0.01 * gmacs
    printed = capsys.readouterr().out
    assert 'unit: MACs (multiply-accumulates' in printed
    for row in ('backbone.stages.0', 'backbone.stages.3', 'head', 'total'):
        assert f'| {row} |' in printed


def test_attention_matmuls_are_counted_exactly():
    """q·k and attention·v: 2 * tokens * (tokens per window) * channels MACs per block."""
    result = get_flops.main([config('det/cascade_swinv2_tiny_coco.py'), '--backbone-only',
                             '--shape', '256'])
    expected = 0
    for stage, depth in enumerate((2, 2, 6, 2)):
        side = 64 // 2**stage
        window = min(8, side)
        expected += depth * 2 * side * side * window * window * 96 * 2**stage
    assert result['by_operator']['matmul'] == expected


@pytest.mark.parametrize('path, shape, parts, options', [
    ('det/cascade_swinv2_tiny_coco.py', ('192', '256'), ('neck', 'rpn_head', 'roi_head'),
     ['--cfg-options', 'model.test_cfg.rpn.max_per_img=100']),  # RoI heads on 100 proposals
    ('seg/upernet_swinv2_tiny_ade20k.py', ('128', '256'), ('decode_head',), []),
])
def test_whole_model_table(path, shape, parts, options, capsys):
    result = get_flops.main([config(path), '--shape', *shape, *options])
    printed = capsys.readouterr().out
    assert f'input 1x3x{shape[0]}x{shape[1]}' in printed
    for part in ('backbone', *parts, 'total'):
        assert f'| {part} |' in printed
        assert result['macs'][part if part != 'total' else ''] > 0
    stages = sum(result['macs'][f'backbone.stages.{i}'] for i in range(4))
    assert stages < result['macs']['backbone'] < result['macs']['']


@pytest.mark.parametrize('argv, message', [
    (['--shape', '0'], '--shape takes H or H W, positive integers'),
    (['--num-classes', '10'], '--num-classes needs --backbone-only'),
])
def test_bad_arguments_are_named(argv, message, capsys):
    with pytest.raises(SystemExit):
        get_flops.main([config('det/cascade_swinv2_tiny_coco.py'), *argv])
    assert message in capsys.readouterr().err
