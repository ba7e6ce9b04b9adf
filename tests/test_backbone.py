"""Behaviour of the backbone itself: shapes for any input size, training, freezing, bad input.
(Numerical correctness against reference code: test_parity_hf.py, test_parity_timm.py.)"""
import math

import pytest
import torch

from mmswinv2 import SwinTransformerV2
from mmswinv2.models.blocks import DropPath
from mmswinv2.models.windows import window_and_shift

from helpers import loss_and_grads, randomize_

SMALL = dict(embed_dims=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8))


def expected_shapes(h, w, embed_dims=16, patch=4):
    shapes, h, w = [], math.ceil(h / patch), math.ceil(w / patch)
    for i in range(4):
        shapes.append((embed_dims * 2**i, h, w))
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    return shapes


@pytest.mark.parametrize('window', [7, 8, 16])
@pytest.mark.parametrize('hw', [(1, 1), (31, 97), (224, 224), (333, 517), (800, 1333)])
def test_any_input_size_gives_documented_shapes(hw, window):
    model = randomize_(SwinTransformerV2(arch=SMALL, window_size=window), seed=0).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, *hw))
    assert [tuple(o.shape[1:]) for o in outs] == expected_shapes(*hw)
    for o in outs:
        assert o.is_contiguous() and torch.isfinite(o).all()


def test_tiny_default_output_channels_and_indices():
    model = SwinTransformerV2(arch='tiny', out_indices=(1, 3)).eval()
    with torch.no_grad():
        outs = model(torch.randn(2, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(2, 192, 8, 12), (2, 768, 2, 3)]
    assert not hasattr(model, 'norm0') and hasattr(model, 'norm1')


@pytest.mark.parametrize('feature_hw, shifted, expected', [
    ((64, 64), True, ((8, 8), (4, 4))),
    ((64, 64), False, ((8, 8), (0, 0))),
    ((8, 8), True, ((8, 8), (0, 0))),      # map == window: one window, no shift (official)
    ((5, 3), True, ((5, 3), (0, 0))),      # smaller than the window: clipped, no shift
    ((16, 6), True, ((8, 6), (4, 0))),     # per axis
    ((9, 100), True, ((8, 8), (4, 4))),
])
def test_window_and_shift_policy(feature_hw, shifted, expected):
    assert window_and_shift(feature_hw, 8, shifted) == expected


def test_backward_reaches_every_parameter():
    model = randomize_(SwinTransformerV2(arch=SMALL), seed=0).train()
    loss, grads = loss_and_grads(model, torch.randn(2, 3, 70, 90))
    assert torch.isfinite(loss)
    params = dict(model.named_parameters())
    assert set(grads) == set(params)
    assert all(torch.isfinite(g).all() for g in grads.values())


def test_with_cp_gives_same_loss_and_gradients():
    x = torch.randn(2, 3, 72, 88)
    results = []
    for with_cp in (False, True):
        model = SwinTransformerV2(arch=SMALL, with_cp=with_cp, drop_path_rate=0.3)
        randomize_(model, seed=0).train()
        torch.manual_seed(123)  # same drop-path draws; checkpointing must replay them
        results.append(loss_and_grads(model, x))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.equal(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-5, atol=1e-6,
                                   msg=name)


@pytest.mark.parametrize('frozen_stages', [0, 1, 3])
def test_frozen_stages_have_no_gradients_and_stay_in_eval(frozen_stages):
    model = randomize_(SwinTransformerV2(arch=SMALL, frozen_stages=frozen_stages), seed=0)
    model.train()
    _, grads = loss_and_grads(model, torch.randn(1, 3, 64, 64))
    frozen = [model.patch_embed] + [model.stages[i] for i in range(frozen_stages)] + \
             [getattr(model, f'norm{i}') for i in range(frozen_stages)]
    frozen_ids = {id(p) for m in frozen for p in m.parameters()}
    for name, p in model.named_parameters():
        if id(p) in frozen_ids:
            assert not p.requires_grad and name not in grads, name
        else:
            assert p.requires_grad and name in grads, name
    assert all(not m.training for f in frozen for m in f.modules())
    trainable = list(model.stages)[frozen_stages:]
    assert all(m.training for s in trainable for m in s.modules())


def test_drop_path_active_in_train_only():
    model = randomize_(SwinTransformerV2(arch=SMALL, drop_path_rate=0.5), seed=0)
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        model.train()
        torch.manual_seed(1)
        a = model(x)[-1]
        torch.manual_seed(2)
        b = model(x)[-1]
        model.eval()
        c, d = model(x)[-1], model(x)[-1]
    assert not torch.allclose(a, b)
    assert torch.equal(c, d)
    rates = [blk.drop_path.drop_prob for s in model.stages for blk in s.blocks]
    assert rates[0] == 0 and rates[-1] == pytest.approx(0.5) and rates == sorted(rates)


def test_drop_path_zeroes_whole_samples_and_rescales_the_rest():
    dp = DropPath(0.5).train()
    torch.manual_seed(0)
    out = dp(torch.ones(4000, 3, 5))
    per_sample = out.flatten(1)
    assert set(per_sample.unique().tolist()) == {0.0, 2.0}
    assert (per_sample.std(dim=1) == 0).all()  # a sample is dropped entirely or kept entirely
    assert abs((per_sample[:, 0] == 0).float().mean().item() - 0.5) < 0.05
    assert torch.equal(dp.eval()(torch.ones(3, 2)), torch.ones(3, 2))


def test_norm_eval_keeps_norms_in_eval_mode():
    model = SwinTransformerV2(arch=SMALL, norm_eval=True).train()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and not any(m.training for m in norms)
    assert model.stages[0].blocks[0].mlp.training


@pytest.mark.parametrize('kwargs, message', [
    (dict(arch='huge-ish'), "unknown arch 'huge-ish'; expected one of"),
    (dict(arch=dict(embed_dims=96, depths=[2, 2]), ), 'missing [\'num_heads\']'),
    (dict(arch=dict(embed_dims=96, depths=[2, 2], num_heads=[3])), 'equal length'),
    (dict(window_size=[8, 8, 8]), 'window_size needs one value per stage (4), got [8, 8, 8]'),
    (dict(window_size=0), 'window_size [0, 0, 0, 0]: 0 is out of range; allowed >= 1'),
    (dict(pretrained_window_sizes=[12, 12, 12]), 'pretrained_window_sizes needs one value'),
    (dict(out_indices=(0, 4)), 'out_indices [0, 4]: 4 is not a stage index; allowed are 0..3'),
    (dict(out_indices=(2, 1)), 'must be increasing'),
    (dict(frozen_stages=5), 'frozen_stages: 5 is out of range; allowed in [-1, 4]'),
    (dict(drop_path_rate=1.5), 'drop_path_rate must be a number in [0, 1), got 1.5'),
    (dict(arch=dict(embed_dims=10, depths=[2] * 4, num_heads=[3] * 4)), 'not divisible'),
])
def test_bad_arguments_raise_value_error_naming_the_problem(kwargs, message):
    with pytest.raises(ValueError) as err:
        SwinTransformerV2(**kwargs)
    assert message in str(err.value)


@pytest.mark.parametrize('shape', [(3, 64, 64), (1, 4, 64, 64), (1, 1, 3, 64, 64)])
def test_bad_input_shape_raises_clear_error(shape):
    model = SwinTransformerV2(arch=SMALL)
    with pytest.raises(ValueError, match=r'expects images of shape \(N, 3, H, W\), got'):
        model(torch.randn(*shape))


@pytest.mark.parametrize('chunk, with_cp, fused', [(3, False, False), (5, True, False),
                                                   (4, False, True), (1000, False, False)])
def test_sequential_attention_gives_the_same_outputs_and_gradients(chunk, with_cp, fused):
    """attn_chunk_windows: 150x190 with window 7 has 6x7 windows per image at stage 1 and 3x4
    at stage 2 (2 images): chunks of 3, 4, 5 cut across images and mask rows; 1000 is one."""
    def build(**kwargs):
        return SwinTransformerV2(arch=SMALL, window_size=7, drop_path_rate=0.,
                                 fused_attention=fused, **kwargs)
    whole = randomize_(build(), seed=0).train()
    chunked = build(attn_chunk_windows=chunk, with_cp=with_cp).train()
    chunked.load_state_dict(whole.state_dict())
    x = torch.randn(2, 3, 150, 190, generator=torch.Generator().manual_seed(0))
    loss_a, grads_a = loss_and_grads(whole, x)
    loss_b, grads_b = loss_and_grads(chunked, x)
    assert abs(loss_a - loss_b) <= 1e-6 * max(1.0, abs(loss_a))
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-5, atol=1e-6,
                                   msg=name)


def official_window_partition(x, window):
    """``(B, H, W, C)`` -> ``(B * nW, wh * ww, C)``, the official ``window_partition``."""
    B, H, W, C = x.shape
    wh, ww = window
    x = x.view(B, H // wh, wh, W // ww, ww, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, wh * ww, C)


def official_shift_mask(padded_hw, window, shift):
    """The official construction: label the padded map's regions, partition into windows, mask
    pairs with different labels (microsoft/Swin-Transformer SwinTransformerBlock.__init__)."""
    H, W = padded_hw
    img_mask = torch.zeros(1, H, W, 1)
    h_slices = ((slice(0, -window[0]), slice(-window[0], -shift[0]), slice(-shift[0], None))
                if shift[0] else (slice(None),))
    w_slices = ((slice(0, -window[1]), slice(-window[1], -shift[1]), slice(-shift[1], None))
                if shift[1] else (slice(None),))
    count = 0
    for h in h_slices:
        for w in w_slices:
            img_mask[:, h, w, :] = count
            count += 1
    mask_windows = official_window_partition(img_mask, window).squeeze(-1)
    attn_mask = mask_windows.unsqueeze(1) - mask_windows.unsqueeze(2)
    return attn_mask.masked_fill(attn_mask != 0, -100.0).masked_fill(attn_mask == 0, 0.0)


@pytest.mark.parametrize('padded_hw, window, shift', [
    ((16, 16), (8, 8), (4, 4)), ((24, 40), (8, 8), (4, 4)), ((21, 35), (7, 7), (3, 3)),
    ((32, 6), (8, 6), (4, 0)), ((6, 32), (6, 8), (0, 4)), ((48, 48), (16, 16), (8, 8)),
])
def test_compact_shift_mask_is_the_official_mask(padded_hw, window, shift):
    """Three (N, N) patterns applied to the last row / column of windows give exactly the
    official (nW, N, N) mask, adding it in place equals adding the full mask, and the masks
    of any run of windows (sequential attention's chunks) are the official ones."""
    from mmswinv2.models.windows import shift_mask
    mask = shift_mask(padded_hw, window, shift, torch.device('cpu'))
    official = official_shift_mask(padded_hw, window, shift)
    nW, N = official.shape[:2]
    assert mask.num_windows == nW
    assert torch.equal(mask.windows(0, nW), official)
    assert torch.equal(mask.windows(nW - 1, nW + 2), official[[nW - 1, 0, 1]])
    logits = torch.randn(2 * nW, 3, N, N)
    expected = (logits.view(2, nW, 3, N, N) + official.unsqueeze(1)).flatten(0, 1)
    assert torch.equal(mask.add_to(logits.clone()), expected)


def test_pretrained_windows_travel_in_the_models_own_state_dict(tmp_path):
    """Windows a checkpoint made the backbone adopt are part of its state dict: a trained
    model's own checkpoint restores them (torch's and MMEngine's loaders), and weights without
    the entry load strictly, keeping the model's setting."""
    from mmengine.runner import load_checkpoint
    trained = SwinTransformerV2(arch=SMALL, window_size=16)
    trained.set_pretrained_window_sizes((12, 12, 12, 6))
    state = trained.state_dict()
    assert state['pretrained_windows'].tolist() == [12, 12, 12, 6]
    for load in ('torch', 'mmengine'):
        model = SwinTransformerV2(arch=SMALL, window_size=16)
        if load == 'torch':
            model.load_state_dict(state)
        else:
            torch.save({'state_dict': state}, tmp_path / 'trained.pth')
            load_checkpoint(model, str(tmp_path / 'trained.pth'), map_location='cpu')
        assert model.pretrained_window_sizes == (12, 12, 12, 6)
        assert [b.attn.pretrained_window_size for b in model.stages[3].blocks] == [6, 6]
    model = SwinTransformerV2(arch=SMALL, window_size=16, pretrained_window_sizes=8)
    model.load_state_dict({k: v for k, v in state.items() if k != 'pretrained_windows'})
    assert model.pretrained_window_sizes == (8, 8, 8, 8)


def test_constants_first_made_under_inference_mode_serve_training():
    """The constants a forward caches (shift masks, position-bias tables) are
    made outside inference mode even when the first forward to need them runs under
    ``torch.inference_mode()``: an inference tensor cannot be saved for backward, so training
    on the same size afterwards failed. (A size and window no other test uses, so that this
    test's inference forward makes them.)"""
    model = SwinTransformerV2(arch=SMALL, window_size=5)
    x = torch.randn(1, 3, 77, 91)
    with torch.inference_mode():
        model.eval()(x)
    model.train()
    sum(out.sum() for out in model(x)).backward()
    assert model.stages[0].blocks[1].attn.cpb_mlp[0].weight.grad is not None
