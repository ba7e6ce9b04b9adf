"""Swin V1 checkpoints convert into mmdet's / mmseg's own SwinTransformer layout.

References, in float64: the official code and timm (committed fixture, see
fixtures/make_official_fixtures.py) and HF transformers (in-process); mmdet's model is run in
float64 and in float32 (the rule and bounds: ``parity.py``). A randomised model with the public
``microsoft/swin-tiny-patch4-window7-224`` settings (depths reduced) is saved as an HF folder,
converted with tools/convert_checkpoint.py, loaded by mmdet's ``SwinTransformer`` through its
own ``init_cfg`` (``convert_weights=False``) and compared stage by stage at 448x448, where every
stage map is larger than the window (mmdet always shifts; HF clips like the official code when
a map is no larger than the window).
"""

import pytest
import torch
from mmengine.config import ConfigDict
from transformers import SwinConfig, SwinForImageClassification

from helpers import capture_outputs, float64_reference, randomize_
from parity import assert_matches_reference, load_fixture
from test_checkpoints import official_state_dict, timm_conversion
from test_convert_checkpoint import convert_checkpoint

pytestmark = pytest.mark.parity

TINY_V1 = dict(embed_dim=96, depths=[2, 2, 2, 2], num_heads=[3, 6, 12, 24], window_size=7)


def hf_stages_and_final_norm(hf_swin, x):
    """HF's per-stage hidden states before patch merging (NCHW), via the encoder's own option,
    then the final layernorm's output (N, L, C)."""
    with torch.no_grad():
        embeddings, dims = hf_swin.embeddings(x)
        encoded = hf_swin.encoder(embeddings, dims, output_hidden_states=True,
                                  output_hidden_states_before_downsampling=True)
        final = hf_swin(x).last_hidden_state
    return [*encoded.reshaped_hidden_states[1:], final]  # [0] is the patch embedding


def mmdet_stages_and_final_norm(backbone, x):
    """mmdet's per-stage outputs before patch merging, then its last normalised output (NCHW)."""
    def before_merge(output):  # SwinBlockSequence -> (x_down, hw_down, x, hw)
        hidden, (h, w) = output[2], output[3]
        return hidden.view(hidden.shape[0], h, w, -1).permute(0, 3, 1, 2)
    stages, outs = capture_outputs(backbone.stages, lambda: backbone(x), before_merge)
    return [*stages, outs[-1]]


def nchw_to_tokens(outputs):
    return [*outputs[:-1], outputs[-1].flatten(2).transpose(1, 2)]


@pytest.fixture(scope='module')
def hf_v1(tmp_path_factory):
    config = SwinConfig(image_size=448, num_labels=1000, **TINY_V1)
    hf = randomize_(SwinForImageClassification(config), seed=11).eval()
    folder = tmp_path_factory.mktemp('swin-tiny-patch4-window7-224')
    hf.save_pretrained(folder)
    return hf, folder


def test_hf_swin_v1_converts_into_mmdet_swin_with_stage_parity(hf_v1, tmp_path, capsys):
    hf, folder = hf_v1
    dst = tmp_path / 'swin_tiny_mmdet.pth'
    assert convert_checkpoint.main([str(folder), str(dst)]) == 0
    printed = capsys.readouterr().out
    assert 'format:      swin_v1_hf' in printed and 'mmdet / mmseg SwinTransformer' in printed
    mmdet_swin = mmdet_swin_from(dst, 96, TINY_V1['depths'], TINY_V1['num_heads'])

    x = torch.randn(1, 3, 448, 448, generator=torch.Generator().manual_seed(0))
    theirs, hf_error = float64_reference(hf.swin, x, hf_stages_and_final_norm)
    assert_matches_reference(lambda m, x: nchw_to_tokens(mmdet_stages_and_final_norm(m, x)),
                             mmdet_swin, x, theirs, hf_error, 'HF Swin V1 in mmdet')


def test_swin_v1_checkpoint_given_to_the_v2_backbone_says_what_to_do(hf_v1):
    from mmswinv2 import SwinTransformerV2
    _, folder = hf_v1
    model = SwinTransformerV2(init_cfg=dict(type='Pretrained', checkpoint=str(folder)))
    with pytest.raises(ValueError, match=r'a Swin V1 checkpoint .*--format swin_v1'):
        model.init_weights()


def mmdet_swin_from(path, embed_dims, depths, num_heads, window_size=7):
    """mmdet's own SwinTransformer loading ``path`` through its init_cfg, as a config would
    (mmdet reads ``init_cfg.checkpoint`` as an attribute, hence ConfigDict)."""
    from mmdet.models.backbones import SwinTransformer
    backbone = SwinTransformer(
        embed_dims=embed_dims, depths=depths, num_heads=num_heads, window_size=window_size,
        drop_path_rate=0., convert_weights=False,
        init_cfg=ConfigDict(type='Pretrained', checkpoint=str(path)))
    backbone.init_weights()
    backbone.eval()
    return backbone


@pytest.mark.parametrize('source', ['official', 'timm'])
def test_official_and_timm_swin_v1_convert_into_mmdet_swin(tmp_path, source, capsys):
    ref = load_fixture('official_swin_v1.pt')
    official = official_state_dict(ref['weights'], ref['buffers'])
    checkpoint = ({'model': official} if source == 'official'
                  else timm_conversion(official, ref['timm_keys']))
    src, dst = tmp_path / f'swin_{source}.pth', tmp_path / 'swin_mmdet.pth'
    torch.save(checkpoint, src)
    assert convert_checkpoint.main([str(src), str(dst)]) == 0
    assert f'format:      swin_v1_{source}' in capsys.readouterr().out
    arch = ref['meta']['arch']
    backbone = mmdet_swin_from(dst, arch['embed_dim'], arch['depths'], arch['num_heads'])
    assert_matches_reference(mmdet_stages_and_final_norm, backbone, ref['input'],
                             [*ref['stages'], ref['final_norm']], ref['reference_fp32_error'],
                             f'official_swin_v1 via {source}')
