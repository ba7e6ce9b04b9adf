"""The SwinV2 variants: published sizes and the options of timm's ``swinv2_cr`` family.

A leaf module: the model, the checkpoint converters and the tools all read these tables, and
it imports nothing of the package.
"""
import math
from typing import Dict, Optional, Tuple, Union

Size2 = Tuple[int, int]

#: Published SwinV2 sizes: embed dims, blocks per stage, heads per stage, and the main-branch
#: LayerNorm after every n-th block of a stage (SwinV2-H and -G, section 3.5 of the paper;
#: mmpretrain's ``arch_zoo``). Heads of ``huge``: mmpretrain's, which it marks uncertain.
ARCH_SETTINGS: Dict[str, dict] = {
    'tiny': dict(embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
                 extra_norm_every_n_blocks=0),
    'small': dict(embed_dims=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24),
                  extra_norm_every_n_blocks=0),
    'base': dict(embed_dims=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32),
                 extra_norm_every_n_blocks=0),
    'large': dict(embed_dims=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48),
                  extra_norm_every_n_blocks=0),
    'huge': dict(embed_dims=352, depths=(2, 2, 18, 2), num_heads=(8, 16, 32, 64),
                 extra_norm_every_n_blocks=6),
    'giant': dict(embed_dims=512, depths=(2, 2, 42, 4), num_heads=(16, 32, 64, 128),
                  extra_norm_every_n_blocks=6),
}
ARCH_ALIASES = {'t': 'tiny', 's': 'small', 'b': 'base', 'l': 'large', 'h': 'huge', 'g': 'giant'}
ARCH_KEYS = ('embed_dims', 'depths', 'num_heads')

#: Backbone options that make the network timm's ``swinv2_cr`` (besides windows and stage norms).
TIMM_CR_SETTINGS = dict(learnable_k_bias=True, cpb_hidden_dims=384, cpb_output_bias=True,
                        cpb_bounded=False, cpb_coords='log', merge_norm_first=True)


def window_and_shift(hw: Size2, window: int, shifted: bool) -> Tuple[Size2, Size2]:
    """The window and cyclic shift of a block on an ``hw`` map, per axis: a map no larger than
    the window is one window of its own size, unshifted (the official rule, per axis); a larger
    map uses ``window`` and, in shifted blocks, a shift of ``window // 2``."""
    wins = tuple(size if size <= window else window for size in hw)
    shifts = tuple(window // 2 if shifted and size > window else 0 for size in hw)
    return wins, shifts


def arch_settings(arch: Union[str, dict]) -> dict:
    """``embed_dims``, ``depths``, ``num_heads`` and ``extra_norm_every_n_blocks`` of an
    ``arch`` name or dict, checked. A dict may leave out ``extra_norm_every_n_blocks`` (0)."""
    if isinstance(arch, str):
        name = ARCH_ALIASES.get(arch.lower(), arch.lower())
        if name not in ARCH_SETTINGS:
            raise ValueError(f'unknown arch {arch!r}; expected one of {list(ARCH_SETTINGS)} '
                             f'(or {list(ARCH_ALIASES)}) or a dict with {", ".join(ARCH_KEYS)}')
        settings = ARCH_SETTINGS[name]
    elif isinstance(arch, dict):
        missing = set(ARCH_KEYS) - set(arch)
        unknown = set(arch) - {*ARCH_KEYS, 'extra_norm_every_n_blocks'}
        if missing or unknown:
            raise ValueError(f'arch dict must have the keys {", ".join(ARCH_KEYS)} (and may '
                             f'have extra_norm_every_n_blocks); missing {sorted(missing)}, '
                             f'unknown {sorted(unknown)}')
        settings = arch
    else:
        raise ValueError(f'arch must be a name or a dict, got {type(arch).__name__}')
    depths = int_sequence('arch depths', settings['depths'])
    heads = int_sequence('arch num_heads', settings['num_heads'])
    if len(depths) != len(heads) or not depths:
        raise ValueError(f'arch depths {list(depths)} and num_heads {list(heads)} must be '
                         f'non-empty and of equal length (one per stage)')
    check_int('arch embed_dims', settings['embed_dims'], minimum=1)
    for name, values in (('depths', depths), ('num_heads', heads)):
        for v in values:
            check_int(f'arch {name} {list(values)}', v, minimum=1)
    extra = settings.get('extra_norm_every_n_blocks', 0)
    check_int('arch extra_norm_every_n_blocks', extra, minimum=0)
    return dict(embed_dims=settings['embed_dims'], depths=depths, num_heads=heads,
                extra_norm_every_n_blocks=extra)


def per_stage(name: str, value, num_stages: int, minimum: int) -> Tuple[int, ...]:
    """One int for every stage, or one per stage, as a tuple of ``num_stages`` checked ints."""
    values = ((value,) * num_stages if isinstance(value, int) and not isinstance(value, bool)
              else int_sequence(name, value))
    if len(values) != num_stages:
        raise ValueError(f'{name} needs one value per stage ({num_stages}), got {list(values)}')
    for v in values:
        check_int(f'{name} {list(values)}', v, minimum=minimum)
    return values


def check_out_indices(out_indices, num_stages: int, name: str = 'out_indices') -> Tuple[int, ...]:
    """Stage indices (negative from the end), increasing and without repeats, as 0-based."""
    if isinstance(out_indices, int) and not isinstance(out_indices, bool):
        out_indices = (out_indices,)
    out_indices = int_sequence(name, out_indices)
    normalised = []
    for i in out_indices:
        if isinstance(i, bool) or not isinstance(i, int) or not -num_stages <= i < num_stages:
            raise ValueError(f'{name} {list(out_indices)}: {i!r} is not a stage index; '
                             f'allowed are 0..{num_stages - 1} (or negative from the end)')
        normalised.append(i % num_stages)
    if len(set(normalised)) != len(normalised) or normalised != sorted(normalised):
        raise ValueError(f'{name} {list(out_indices)} must be increasing without repeats')
    return tuple(normalised)


def int_sequence(name: str, value) -> Tuple:
    """``value`` as a tuple, if it is a list or tuple (its items are checked by the caller)."""
    if not isinstance(value, (list, tuple)):
        raise ValueError(f'{name}: expected a list or tuple of ints, got {value!r}')
    return tuple(value)


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_int(name: str, value, minimum: int, maximum: Optional[int] = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f'{name}: expected an int, got {value!r}')
    if value < minimum or (maximum is not None and value > maximum):
        allowed = f'>= {minimum}' if maximum is None else f'in [{minimum}, {maximum}]'
        raise ValueError(f'{name}: {value} is out of range; allowed {allowed}')
