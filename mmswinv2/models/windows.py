"""Window plumbing for shifted-window attention: pure tensor functions, no parameters.

Feature maps are channels-last, ``(B, H, W, C)``. Windows may be rectangular, ``(wh, ww)``,
because a feature map smaller than the window along one axis clips the window on that axis only
(see :func:`window_and_shift`).
"""
from functools import lru_cache
from typing import Tuple

import torch
import torch.nn.functional as F

Size2 = Tuple[int, int]

#: Added to attention logits between tokens of different regions of a shifted window
#: (the official value; softmax sends these weights to ~0).
SHIFT_MASK_VALUE = -100.0


def window_and_shift(feature_hw: Size2, window: int, shifted: bool) -> Tuple[Size2, Size2]:
    """The window and cyclic shift one block uses on a ``feature_hw`` map.

    Per axis: a map no larger than the window is attended as a single window of the map's own
    size and is not shifted (the official / HF rule for a square map, applied to each axis);
    a larger map uses ``window`` and, in shifted blocks, a shift of ``window // 2``.
    """
    wins, shifts = [], []
    for size in feature_hw:
        if size <= window:
            wins.append(size)
            shifts.append(0)
        else:
            wins.append(window)
            shifts.append(window // 2 if shifted else 0)
    return (wins[0], wins[1]), (shifts[0], shifts[1])


def pad_to_multiple(x: torch.Tensor, multiple: Size2) -> torch.Tensor:
    """Zero-pad a ``(B, H, W, C)`` map at the bottom and right to multiples of ``multiple``."""
    pad_h = -x.shape[1] % multiple[0]
    pad_w = -x.shape[2] % multiple[1]
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    return x


def window_partition(x: torch.Tensor, window: Size2) -> torch.Tensor:
    """``(B, H, W, C)`` with H, W multiples of ``window`` -> ``(B * nW, wh * ww, C)``."""
    B, H, W, C = x.shape
    wh, ww = window
    x = x.view(B, H // wh, wh, W // ww, ww, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, wh * ww, C)


def window_reverse(windows: torch.Tensor, window: Size2, hw: Size2) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B * nW, wh * ww, C)`` -> ``(B, H, W, C)``."""
    H, W = hw
    wh, ww = window
    C = windows.shape[-1]
    x = windows.view(-1, H // wh, W // ww, wh, ww, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, H, W, C)


def shift_window_mask(padded_hw: Size2, window: Size2, shift: Size2,
                      device: torch.device) -> torch.Tensor:
    """Additive attention mask ``(nW, N, N)`` for a cyclically shifted, padded map.

    After rolling by ``-shift`` a window can hold tokens from up to four regions that are not
    neighbours in the image; pairs from different regions get :data:`SHIFT_MASK_VALUE`, all other
    pairs 0. The regions are the official ones, built on the padded map.
    """
    return _shift_window_mask(tuple(padded_hw), tuple(window), tuple(shift), str(device))


@lru_cache(maxsize=64)
def _shift_window_mask(padded_hw: Size2, window: Size2, shift: Size2,
                       device: str) -> torch.Tensor:
    H, W = padded_hw
    region = torch.zeros(1, H, W, 1)
    count = 0
    for hs in _region_slices(window[0], shift[0]):
        for ws in _region_slices(window[1], shift[1]):
            region[:, hs, ws, :] = count
            count += 1
    ids = window_partition(region, window).squeeze(-1)  # (nW, N)
    different = ids.unsqueeze(1) != ids.unsqueeze(2)
    mask = torch.zeros(different.shape).masked_fill_(different, SHIFT_MASK_VALUE)
    return mask.to(device)


def _region_slices(window: int, shift: int):
    if shift == 0:
        return (slice(None),)
    return slice(0, -window), slice(-window, -shift), slice(-shift, None)
