"""Window plumbing for shifted-window attention: pure tensor functions, no parameters.

Feature maps are channels-last, ``(B, H, W, C)``. Windows may be rectangular, ``(wh, ww)``,
because a feature map smaller than the window along one axis clips the window on that axis only
(see :func:`window_and_shift`).
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .position_bias import constant_cache, uncached_when_compiling

Size2 = Tuple[int, int]

#: Added to attention logits between tokens of different regions of a shifted window (the
#: official value). It is not -inf: with logit scales up to 100 a masked pair can keep a weight,
#: and the official model is what checkpoints were trained with.
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


class WindowLayout:
    """How one block cuts an ``H x W`` map into windows and puts them back, in one gather each
    way.

    The official recipe is four passes over the map: zero-pad at the bottom/right to whole
    windows, roll by ``-shift``, partition into windows; and back: reverse the partition, roll
    by ``+shift``, crop. All of them only move tokens, so in eager mode each direction is one
    ``index_select`` of precomputed (cached) token positions: the windows gather their tokens
    straight from the unpadded map (padding tokens are then set to zero), and the map gathers
    its tokens straight from the windows. While ``torch.compile`` traces, the official ops are
    used instead: Inductor fuses them into one gather itself, whereas index arithmetic on
    symbolic sizes (``dynamic=True``) multiplies the compile time. Windows are numbered
    ``b * nW + r * grid_w + c`` and tokens inside a window row-major, as in the official
    partition.

    Attributes:
        window, shift: what :func:`window_and_shift` chose for the map.
        grid: windows per column and per row of the padded map.
        mask: the :class:`ShiftMask` of the windows, or None when not shifted.
    """

    def __init__(self, hw: Size2, window_size: int, shifted: bool, device: torch.device):
        self.hw = tuple(hw)
        self.window, self.shift = window_and_shift(self.hw, window_size, shifted)
        # (floor divisions of non-negative sizes only: with symbolic sizes, Dynamo in torch 2.13
        # fails its own guards on the ceil-division form)
        self.padded_hw = tuple(size + -size % w for size, w in zip(self.hw, self.window))
        self.grid = (self.padded_hw[0] // self.window[0], self.padded_hw[1] // self.window[1])
        self.mask = ShiftMask(self.grid, self.window, self.shift, device) \
            if any(self.shift) else None
        self._indices = None if torch.compiler.is_compiling() else _layout_indices(
            self.hw, self.window, self.shift, str(device))

    @property
    def tokens_per_window(self) -> int:
        return self.window[0] * self.window[1]

    def partition(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C)`` -> ``(B * nW, wh * ww, C)``: padded with zeros, rolled by
        ``-shift``, cut into windows."""
        B, H, W, C = x.shape
        if self._indices is None:  # compiling
            x = pad_to_multiple(x, self.window)
            x = torch.roll(x, shifts=(-self.shift[0], -self.shift[1]), dims=(1, 2))
            x = x.view(B, self.grid[0], self.window[0], self.grid[1], self.window[1], C)
            return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, self.tokens_per_window, C)
        to_windows, padding, _ = self._indices
        windows = _gather_tokens(x.reshape(B, H * W, C), to_windows)
        if padding is not None:
            windows.index_fill_(1, padding, 0)
        return windows.view(-1, self.tokens_per_window, C)

    def reverse(self, windows: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`partition`: ``(B * nW, wh * ww, C)`` -> ``(B, H, W, C)``
        (rolled back by ``+shift``, padding dropped)."""
        (gh, gw), (wh, ww), C = self.grid, self.window, windows.shape[-1]
        if self._indices is None:  # compiling
            x = windows.view(-1, gh, gw, wh, ww, C).permute(0, 1, 3, 2, 4, 5)
            x = torch.roll(x.reshape(-1, *self.padded_hw, C), shifts=self.shift, dims=(1, 2))
            return x[:, :self.hw[0], :self.hw[1]]
        _, _, to_map = self._indices
        tokens = windows.reshape(-1, gh * gw * self.tokens_per_window, C)
        return _gather_tokens(tokens, to_map).view(-1, *self.hw, C)


def _gather_tokens(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``tokens[:, index]`` of ``(B, L, C)`` tokens, as one ``index_select`` over the rows of
    the flattened ``(B * L, C)`` tensor: on CPU that copies whole rows and runs about twice as
    fast as ``index_select`` along dimension 1 (AMD EPYC, 2 threads: a stage-1 map of 8 x 256²,
    1.78 -> 0.86 ms; the gathers of a bf16 SwinV2-T forward at 8 x 256², 18.6 -> 10.7 ms, at
    800x1344, 34.6 -> 15.8 ms)."""
    B, L, C = tokens.shape
    count = index.numel()
    if B != 1:  # the batch offsets (none for an empty batch)
        index = (torch.arange(0, B * L, L, device=index.device).unsqueeze(1) + index).flatten()
    return tokens.reshape(B * L, C).index_select(0, index).view(B, count, C)


@constant_cache(maxsize=256)
def _layout_indices(hw: Size2, window: Size2, shift: Size2, device: str):
    """Token positions of :class:`WindowLayout`, found by running the official recipe on the
    positions themselves: for each window token, its position in the flattened map (0 for
    padding); the window tokens that are padding (None if none); for each map token, its
    position in the flattened windows."""
    H, W = hw
    positions = torch.arange(H * W).view(1, H, W, 1)
    padded = F.pad(positions, (0, 0, 0, -W % window[1], 0, -H % window[0]), value=-1)
    rolled = torch.roll(padded, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    gh, gw = rolled.shape[1] // window[0], rolled.shape[2] // window[1]
    source = rolled.view(gh, window[0], gw, window[1]).permute(0, 2, 1, 3).reshape(-1)
    padding = (source < 0).nonzero().flatten()

    slots = torch.arange(source.numel()).view(gh, gw, window[0], window[1])
    unrolled = torch.roll(slots.permute(0, 2, 1, 3).reshape(1, gh * window[0], -1),
                          shifts=shift, dims=(1, 2))
    to_map = unrolled[0, :H, :W].reshape(-1)
    return (source.clamp_min(0).to(device), padding.to(device) if len(padding) else None,
            to_map.to(device))


class ShiftMask:
    """The additive attention mask of a cyclically shifted, padded map, kept compact.

    After rolling by ``-shift`` a window can hold tokens from up to four regions that are not
    neighbours in the image; pairs from different regions get :data:`SHIFT_MASK_VALUE` (see its
    note), all other pairs 0 (the official regions, built on the padded map). Only windows in
    the last row of the window grid (when shifted vertically) and in its last column
    (horizontally) straddle regions, and all windows of the last row share one pattern, those
    of the last column another, and the corner window has their union. So the mask is three
    ``(N, N)`` patterns, whatever the map size, and interior windows get no mask at all.

    Windows are numbered as :class:`WindowLayout` numbers them: ``b * nW + r * grid_w + c``.
    """

    def __init__(self, grid: Size2, window: Size2, shift: Size2, device: torch.device):
        self.grid = tuple(grid)
        self.shift = tuple(shift)
        #: (4, N, N): no mask, last row, last column, corner (last row and column).
        patterns = uncached_when_compiling(_mask_patterns)
        self.patterns = patterns(tuple(window), self.shift, str(device))

    @property
    def num_windows(self) -> int:
        return self.grid[0] * self.grid[1]

    def kinds(self) -> torch.Tensor:
        """``(nW,)`` pattern index of each window of one image (0 for interior windows)."""
        kinds = uncached_when_compiling(_window_kinds)
        return kinds(self.grid, self.shift, str(self.patterns.device))

    def add_to(self, logits: torch.Tensor, rows: Optional[Size2] = None) -> torch.Tensor:
        """Add the mask in place to ``(B * nW, heads, N, N)`` logits, touching only the windows
        of the last row and column; returns ``logits``. ``rows=(r0, r1)``: the logits are those
        of window rows ``r0 .. r1 - 1`` of one image only (``(r1 - r0) * grid_w`` windows).

        Outside autograd: the mask is a constant, so the logits' gradient passes through
        unchanged, and recording in-place updates of slices would make backward copy the whole
        logits gradient once per slice (measured: a tenth of a SwinV2-T training step on CPU).
        The logits must not be needed by the backward of what made them (a product's output
        is not)."""
        with torch.no_grad():
            for windows, pattern in self.regions(logits, rows):
                windows += pattern
        return logits

    def regions(self, logits: torch.Tensor, rows: Optional[Size2] = None) -> list:
        """``(windows, pattern)`` pairs: views of the ``(B * nW, heads, N, N)`` logits (or of
        window ``rows`` of one image, as in :meth:`add_to`) that the mask touches, each with
        the ``(1, N, N)`` pattern they get; the interior windows are in none of them."""
        gh, gw = self.grid
        r0, r1 = rows if rows is not None else (0, gh)
        grid = logits.view(-1, r1 - r0, gw, *logits.shape[1:])
        row, column, corner = (p.unsqueeze(0) for p in self.patterns[1:])  # (1, N, N)
        last_row = self.shift[0] and r1 == gh  # the rows hold the image's last row
        if last_row and self.shift[1]:
            return [(grid[:, :-1, -1], column), (grid[:, -1, :-1], row), (grid[:, -1, -1], corner)]
        if last_row:
            return [(grid[:, -1], row)]
        return [(grid[:, :, -1], column)] if self.shift[1] else []

    def windows(self, start: int, stop: int) -> torch.Tensor:
        """``(stop - start, N, N)`` masks of windows ``start .. stop - 1`` (of the whole batch)."""
        index = torch.arange(start, stop, device=self.patterns.device) % self.num_windows
        return self.patterns[self.kinds()[index]]

    def full(self) -> torch.Tensor:
        """``(nW, N, N)``: the mask of every window of one image, materialised."""
        return self.windows(0, self.num_windows)


@constant_cache(maxsize=64)
def _mask_patterns(window: Size2, shift: Size2, device: str) -> torch.Tensor:
    wh, ww = window
    # token -> row / column inside the window, as constants: Inductor (torch 2.13) fails to
    # generate code for comparisons of index expressions (arange) fused into the softmax
    rows = torch.tensor([t // ww for t in range(wh * ww)])
    cols = torch.tensor([t % ww for t in range(wh * ww)])
    # In the last window row, rows from wh - shift on came from the top of the image.
    row_region = rows >= wh - shift[0] if shift[0] else torch.zeros_like(rows, dtype=torch.bool)
    col_region = cols >= ww - shift[1] if shift[1] else torch.zeros_like(cols, dtype=torch.bool)
    split_rows = row_region[:, None] != row_region[None, :]
    split_cols = col_region[:, None] != col_region[None, :]
    patterns = torch.zeros(4, wh * ww, wh * ww)
    for i, different in enumerate((split_rows, split_cols, split_rows | split_cols), start=1):
        patterns[i].masked_fill_(different, SHIFT_MASK_VALUE)
    return patterns.to(device)


@constant_cache(maxsize=64)
def _window_kinds(grid: Size2, shift: Size2, device: str) -> torch.Tensor:
    gh, gw = grid
    last_row = torch.zeros(gh, gw, dtype=torch.long)
    last_row[-1] = 1 if shift[0] else 0
    last_column = torch.zeros(gh, gw, dtype=torch.long)
    last_column[:, -1] = 2 if shift[1] else 0
    # 1: last row, 2: last column, 3: both (the corner)
    return (last_row + last_column).flatten().to(device)
