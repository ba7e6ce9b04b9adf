"""Window plumbing of shifted-window attention: pure tensor functions, no parameters.

Maps are channels-last, ``(B, H, W, C)``. A window may be rectangular, ``(wh, ww)``: a map no
longer than the window along an axis is attended as one window of its own length there
(:func:`window_and_shift`). Windows are numbered ``b * nW + r * grid_w + c``, their tokens
row-major, as in the official ``window_partition``.
"""
import functools
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from ..variants import window_and_shift  # noqa: F401 (the rule lives with the variants)

Size2 = Tuple[int, int]


def constant_cache(function):
    """``functools.lru_cache`` for functions that make constant tensors from sizes. The tensors
    are made outside inference mode (a first call under ``torch.inference_mode()`` must not
    give a later training forward an inference tensor to save for backward); while
    ``torch.compile`` traces, the graph computes them itself."""
    @functools.lru_cache(maxsize=64)
    def cached(*args):
        with torch.inference_mode(False):
            return function(*args)

    @functools.wraps(function)
    def call(*args):
        return function(*args) if torch.compiler.is_compiling() else cached(*args)
    return call


#: Added to the logits of token pairs from different regions of a shifted window (the official
#: value; not -inf: with logit scales up to 100 a masked pair can keep a weight).
SHIFT_MASK_VALUE = -100.0


def pad_to_multiple(x: torch.Tensor, multiple: Size2) -> torch.Tensor:
    """Zero-pad a ``(B, H, W, C)`` map at the bottom and right to multiples of ``multiple``."""
    pad_h, pad_w = -x.shape[1] % multiple[0], -x.shape[2] % multiple[1]
    return F.pad(x, (0, 0, 0, pad_w, 0, pad_h)) if pad_h or pad_w else x


def window_partition(x: torch.Tensor, window: Size2) -> torch.Tensor:
    """``(B, H, W, C)`` -> ``(B * nW, wh * ww, C)``; H and W are multiples of the window."""
    B, H, W, C = x.shape
    wh, ww = window
    x = x.view(B, H // wh, wh, W // ww, ww, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, wh * ww, C)


def window_reverse(windows: torch.Tensor, window: Size2, hw: Size2) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B * nW, wh * ww, C)`` -> ``(B, H, W, C)``."""
    (wh, ww), (H, W), C = window, hw, windows.shape[-1]
    x = windows.view(-1, H // wh, W // ww, wh, ww, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, H, W, C)


class ShiftMask:
    """The additive attention mask of a cyclically shifted, padded map, kept compact.

    After rolling by ``-shift``, only the windows of the last row of the grid (shifted
    vertically) and of its last column (horizontally) hold tokens from regions that are not
    neighbours in the image. The last row's windows share one ``(N, N)`` pattern, the last
    column's another, and the corner window has their union: three patterns, whatever the map
    size, instead of a ``(nW, N, N)`` mask (600 MB for a 1536 px image with windows of 32).
    """

    def __init__(self, grid: Size2, window: Size2, shift: Size2, device: torch.device):
        self.grid, self.window, self.shift = tuple(grid), tuple(window), tuple(shift)
        #: (4, N, N): none, last row, last column, corner.
        self.patterns = _mask_patterns(self.window, self.shift, str(device))

    @property
    def num_windows(self) -> int:
        return self.grid[0] * self.grid[1]

    def kinds(self) -> torch.Tensor:
        """``(nW,)`` index into :attr:`patterns` of each window of one image."""
        return _window_kinds(self.grid, self.shift, str(self.patterns.device))

    def add_to(self, logits: torch.Tensor) -> torch.Tensor:
        """Add the mask in place to the ``(B * nW, heads, N, N)`` logits of whole images,
        touching only the windows of the last row and column; returns ``logits``.

        Outside autograd: the mask is a constant (the gradient passes unchanged), and recorded
        in-place updates of slices would make backward copy the whole logits gradient once per
        slice. The logits must not be saved by the backward of the op that made them."""
        gh, gw = self.grid
        grid = logits.view(-1, gh, gw, *logits.shape[1:])
        row, column, corner = (p.unsqueeze(0) for p in self.patterns[1:])
        with torch.no_grad():
            if self.shift[0] and self.shift[1]:
                grid[:, :-1, -1] += column
                grid[:, -1, :-1] += row
                grid[:, -1, -1] += corner
            elif self.shift[0]:
                grid[:, -1] += row
            elif self.shift[1]:
                grid[:, :, -1] += column
        return logits

    def windows(self, start: int, stop: int) -> torch.Tensor:
        """``(stop - start, N, N)``: the masks of windows ``start .. stop - 1`` of the batch."""
        index = torch.arange(start, stop, device=self.patterns.device) % self.num_windows
        return self.patterns[self.kinds()[index]]


def shift_regions(size: int, window: int, shift: int) -> torch.Tensor:
    """The official region (0, 1, 2) of each position of a padded axis after the roll: the
    slices ``(0, -window)``, ``(-window, -shift)``, ``(-shift, None)``."""
    region = torch.zeros(size, dtype=torch.long)
    if shift:
        region[size - window:size - shift] = 1
        region[size - shift:] = 2
    return region


@constant_cache
def _mask_patterns(window: Size2, shift: Size2, device: str) -> torch.Tensor:
    # the regions of the tokens of the last window along each axis (from the official rule)
    rows = shift_regions(window[0], window[0], shift[0])
    cols = shift_regions(window[1], window[1], shift[1])
    row_of = rows.repeat_interleave(window[1])  # token t = r * ww + c
    col_of = cols.repeat(window[0])
    split_rows = row_of[:, None] != row_of[None, :]
    split_cols = col_of[:, None] != col_of[None, :]
    patterns = torch.zeros(4, window[0] * window[1], window[0] * window[1])
    for i, split in enumerate((split_rows, split_cols, split_rows | split_cols), start=1):
        patterns[i].masked_fill_(split, SHIFT_MASK_VALUE)
    return patterns.to(device)


@constant_cache
def _window_kinds(grid: Size2, shift: Size2, device: str) -> torch.Tensor:
    kinds = torch.zeros(grid, dtype=torch.long)
    if shift[0]:
        kinds[-1] += 1
    if shift[1]:
        kinds[:, -1] += 2
    return kinds.flatten().to(device)


def shift_mask(hw: Size2, window: Size2, shift: Size2,
               device: torch.device) -> Optional[ShiftMask]:
    """The :class:`ShiftMask` of a padded ``hw`` map, or None without a shift."""
    if not any(shift):
        return None
    grid = (hw[0] // window[0], hw[1] // window[1])
    return ShiftMask(grid, window, shift, device)
