"""tools/convert_checkpoint.py: converts public layouts, records meta, writes nothing on error."""
import os

import pytest
import torch

from mmswinv2 import SwinTransformerV2

from helpers import load_tool
from parity import load_fixture
from test_checkpoints import SMALL, assert_matches_official, official_checkpoint

convert_checkpoint = load_tool('convert_checkpoint.py')


@pytest.fixture(scope='module')
def official():
    return load_fixture('official_swinv2.pt')


@pytest.mark.parity
def test_official_checkpoint_converts_with_arch_and_windows(tmp_path, official, capsys):
    src, dst = tmp_path / 'swinv2_official.pth', tmp_path / 'out' / 'converted.pth'
    torch.save(official_checkpoint(official, 'w16_256_pw12'), src)
    assert convert_checkpoint.main([str(src), str(dst)]) == 0
    printed = capsys.readouterr().out
    assert 'format:      official' in printed
    assert 'windows:     [16, 16, 16, 8], pretrained [12, 12, 12, 6]' in printed
    assert 'regenerable buffers' in printed

    written = torch.load(dst, weights_only=True)
    assert written['meta']['source_format'] == 'official'
    assert written['meta']['arch']['depths'] == [2, 2, 2, 2]
    assert written['meta']['pretrained_window_sizes'] == [12, 12, 12, 6]
    model = SwinTransformerV2(arch=SMALL, window_size=16, pretrained_window_sizes=(12, 12, 12, 6),
                              drop_path_rate=0.,
                              init_cfg=dict(type='Pretrained', checkpoint=str(dst)))
    model.init_weights()
    assert_matches_official(model.eval(), official, 'w16_256_pw12',
                            'official_swinv2 w16_256_pw12 converted')


def test_forced_format_and_unreadable_sources_write_nothing(tmp_path, official, capsys):
    src = tmp_path / 'swinv2_official.pth'
    torch.save(official_checkpoint(official, 'w8_256'), src)
    corrupt = tmp_path / 'corrupt.pth'
    corrupt.write_bytes(src.read_bytes()[:4096])
    out = tmp_path / 'out'
    for args, message in [([str(corrupt)], 'truncated or corrupted'),
                          ([str(src), '--format', 'hf'],
                           "format 'hf' was requested, but no key matches"),
                          ([str(tmp_path / 'missing.pth')], 'no such file')]:
        dst = out / 'converted.pth'
        assert convert_checkpoint.main([args[0], str(dst), *args[1:]]) == 1
        assert message in capsys.readouterr().err
        assert not out.exists() or os.listdir(out) == []


def test_refuses_to_overwrite_its_source(tmp_path, official, capsys):
    src = tmp_path / 'swinv2.pth'
    torch.save(official_checkpoint(official, 'w8_256'), src)
    before = src.read_bytes()
    assert convert_checkpoint.main([str(src), str(src)]) == 1
    assert 'refusing to overwrite' in capsys.readouterr().err
    assert src.read_bytes() == before
