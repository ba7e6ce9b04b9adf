"""tools/analysis/plot_position_bias.py: heat maps of a real checkpoint layout, and bad input."""
import numpy as np
import pytest
import torch
from PIL import Image

from mmswinv2.models.position_bias import continuous_position_bias

from helpers import load_tool
from parity import load_fixture
from test_checkpoints import SMALL, fp32, official_checkpoint

plot_position_bias = load_tool('analysis/plot_position_bias.py')


@pytest.fixture(scope='module')
def checkpoint_192_w12(tmp_path_factory):
    """The official 192 px / window 12 checkpoint (pretraining windows 12, 12, 12, 6)."""
    path = tmp_path_factory.mktemp('ckpt') / 'swinv2_w12_192.pth'
    torch.save(official_checkpoint(load_fixture('official_swinv2_transfer.pt'), 'w12_192'), path)
    return path


def test_heat_maps_per_stage_at_the_pretraining_and_target_windows(tmp_path, capsys,
                                                                   checkpoint_192_w12):
    out = tmp_path / 'maps'
    assert plot_position_bias.main([str(checkpoint_192_w12), '--stages', '0', '3',
                                    '--windows', '12', '24', '--out-dir', str(out)]) == 0
    printed = capsys.readouterr().out
    # Stage 3 was pretrained at window 6: at 12, (23^2 - 11^2) / 23^2 of the offsets are new.
    assert 'stage 3 (pretraining window 6): offsets extrapolated, window 12: 77%' in printed
    for stage in (0, 3):
        picture = np.asarray(Image.open(out / f'position_bias_stage{stage}_block0.png')
                             .convert('L'), dtype=float)
        assert picture.shape[0] > 200 and picture.std() > 10  # drawn, not blank


def test_plotted_values_are_the_backbones_position_bias(checkpoint_192_w12):
    """The tables plotted are those the loaded backbone adds to its attention logits."""
    from mmswinv2 import SwinTransformerV2
    from mmswinv2.checkpoints.loading import read_backbone_weights
    _, _, state_dict, _ = read_backbone_weights(str(checkpoint_192_w12))
    tables = plot_position_bias.position_bias_tables(state_dict, 3, 1, [12], 6,
                                                     'normalized_log2', True)
    model = SwinTransformerV2(arch=SMALL, window_size=12,
                              init_cfg=dict(type='Pretrained', checkpoint=str(checkpoint_192_w12)))
    model.init_weights()
    attn = model.stages[3].blocks[1].attn
    bias = continuous_position_bias(attn.cpb_mlp, (12, 12), (6, 6), attn.num_heads)  # (h, N, N)
    # Token pair (i, j) of a 12x12 window sits at offset (row_i - row_j, col_i - col_j).
    center = tables[12][:, 11, 11]  # offset (0, 0)
    assert torch.allclose(bias[:, 0, 0], center, atol=1e-6)
    corner = tables[12][:, 22, 22]  # offset (11, 11): last token against the first
    assert torch.allclose(bias[:, 143, 0], corner, atol=1e-6)


@pytest.mark.parametrize('args, message', [
    (['--stages', '4'], '--stages: 4 is not a stage of this checkpoint (0..3)'),
    (['--block', '2'], '--block: stage 0 has blocks 0..1, got 2'),
    (['--windows', '0'], '--windows: windows must be positive integers'),
    (['--pretrained-window-sizes', '8', '8'], '--pretrained-window-sizes: give one window'),
])
def test_bad_arguments_are_named(tmp_path, capsys, checkpoint_192_w12, args, message):
    assert plot_position_bias.main([str(checkpoint_192_w12), '--out-dir', str(tmp_path / 'o'),
                                    *args]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / 'o').exists()


def test_checkpoint_without_recorded_windows_needs_them(tmp_path, capsys):
    path = tmp_path / 'swinv2_tiny_window8_256.pth'
    torch.save(fp32(load_fixture('timm_swinv2.pt')['state_dict']), path)
    assert plot_position_bias.main([str(path), '--out-dir', str(tmp_path / 'o')]) == 1
    assert 'pass --pretrained-window-sizes' in capsys.readouterr().err
    assert plot_position_bias.main([str(path), '--out-dir', str(tmp_path / 'o'),
                                    '--pretrained-window-sizes', '8']) == 0
    assert (tmp_path / 'o' / 'position_bias_stage0_block0.png').exists()
