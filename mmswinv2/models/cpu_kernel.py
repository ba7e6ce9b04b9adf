"""The attention core of CPU inference as one compiled kernel (``csrc/window_attention.cpp``).

Between the qkv and output projections, the explicit path (``WindowAttentionV2._explicit``)
runs a dozen PyTorch ops per piece of windows: the casts and normalisation of q and k, the
fp32 ``q . k^T``, the bias and mask, the floor, the softmax, the cast of the weights and
``weights @ v``, then a transposing copy into token order. Each passes a whole piece's tensors
(several MiB) through memory. The kernel does the same ops in the same order and types (up
to rounding: k times ``1 / |k|``, at::vec's exp) for one (window, head) at a time, whose q,
k, logits and v (64 x 64 fp32 logits: 16 KiB for a window of 8) stay in the core's caches,
and writes the output in token order. Isolated, SwinV2-T's four stage shapes, AMD EPYC (Zen
4), 1 thread: 1.6-2.1x the explicit path's speed in bf16, 1.6-3.2x in fp32; the forward
1.14-1.17x in bf16, 1.07-1.11x in fp32 (``docs/benchmarks.md``).

**Build.** At the first CPU inference forward of a process, with ``torch.utils.cpp_extension``
(a C++ compiler and ``ninja`` are needed; about 20 s, once: the library is kept in PyTorch's
extension directory, ``TORCH_EXTENSIONS_DIR`` or ``~/.cache/torch_extensions``, and rebuilt
only when the source, the flags or torch change). It is built for the vector instructions
PyTorch itself uses on this CPU (``torch.backends.cpu.get_cpu_capability()``, which
``ATEN_CPU_CAPABILITY`` can lower), one library per kind. Where it cannot be built, one warning
says why and the explicit path runs instead; ``MMSWINV2_CPU_KERNEL=0`` turns it off.

**Where it runs**: see :func:`applies`. Elsewhere (training, autograd, CUDA, ``torch.compile``
and traced graphs, float64 or fp16, ``fused_attention=True``, ``attn_chunk_windows``) the
attention runs as PyTorch ops.
"""
import os
import platform
import threading
from typing import Optional

import torch

from .lean_autograd import LOGIT_FLOOR, eager_cpu_inference
from .windows import ShiftMask

#: Floor modes of the kernel (see ``WindowAttentionV2``'s "Subnormal floats").
FLOOR_MASKED_WINDOWS = 1
FLOOR_ALL = 2

SOURCE = os.path.join(os.path.dirname(__file__), 'csrc', 'window_attention.cpp')
ENV_SWITCH = 'MMSWINV2_CPU_KERNEL'

#: Whether PyTorch's intra-op threads are OpenMP's (then the kernel is built with OpenMP, and
#: each thread keeps a thread count of its own, as the streams need).
OPENMP = 'parallel backend: OpenMP' in torch.__config__.parallel_info()
_NO_PATTERNS = torch.empty(0)
_NO_KINDS = torch.empty(0, dtype=torch.long)

#: Compiler flags per build: at::vec's 512-bit or 256-bit vectors on x86 (the instruction sets
#: PyTorch compiles its own kernels of that capability with), its portable vectors elsewhere.
BUILD_FLAGS = {
    'avx512': ['-mavx512f', '-mavx512bw', '-mavx512vl', '-mavx512dq', '-mfma',
               '-DCPU_CAPABILITY_AVX512', '-DCPU_CAPABILITY=AVX512'],
    'avx2': ['-mavx2', '-mfma', '-mf16c', '-DCPU_CAPABILITY_AVX2', '-DCPU_CAPABILITY=AVX2'],
    'default': ['-DCPU_CAPABILITY=DEFAULT'],
}

_lock = threading.Lock()
#: Whether this process has tried to load the kernel (see :func:`available`).
_tried = False
#: The build loaded in this process (a key of :data:`BUILD_FLAGS`), or None.
loaded_build: Optional[str] = None


def applies(qkv: torch.Tensor, bias: torch.Tensor, weight: torch.Tensor,
            training: bool) -> bool:
    """Whether the kernel computes the attention of this qkv projection with this position
    bias: eager CPU inference (eval mode, no autograd recording, nothing traced), an fp32 or
    bf16 projection, fp32 logits, and the kernel loaded."""
    return (not training and qkv.dtype in (torch.float32, torch.bfloat16)
            and bias.dtype == torch.float32 and eager_cpu_inference(qkv, weight)
            and available())


def window_attention(qkv: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor,
                     mask: Optional[ShiftMask], first_window: int,
                     floor_mode: int) -> torch.Tensor:
    """``(windows, N, C)`` attention of the ``(windows, N, 3 * C)`` qkv projection: ``scale``
    the ``(heads,)`` fp32 logit scales (already clamped and exponentiated), ``bias`` the
    ``(heads, N, N)`` fp32 position bias, ``mask`` the windows' :class:`ShiftMask` or None
    (the windows being those of whole images, or from window ``first_window`` of one image
    on), ``floor_mode`` :data:`FLOOR_MASKED_WINDOWS` or :data:`FLOOR_ALL`."""
    patterns, kinds = (mask.patterns, mask.kinds()) if mask is not None else \
        (_NO_PATTERNS, _NO_KINDS)
    return torch.ops.mmswinv2.window_attention(qkv.contiguous(), scale.contiguous(), bias,
                                               patterns, kinds, first_window, floor_mode,
                                               LOGIT_FLOOR)


def available() -> bool:
    """Whether the kernel is loaded; builds or loads it at the first call of a process."""
    global _tried, loaded_build
    if not _tried:
        with _lock:
            if not _tried:
                loaded_build = _load()
                _tried = True
    return loaded_build is not None


def build_for(capability: str) -> str:
    """The build (a key of :data:`BUILD_FLAGS`) for PyTorch's CPU capability ``capability``."""
    if platform.machine().lower() in ('x86_64', 'amd64'):
        if capability.startswith('AVX512'):
            return 'avx512'
        if capability == 'AVX2':
            return 'avx2'
    return 'default'


def _load() -> Optional[str]:
    """Build (or find built) and load the kernel; its build, or None where it cannot be."""
    from mmengine.logging import print_log
    if os.environ.get(ENV_SWITCH, '1') == '0':
        print_log(f'mmswinv2: {ENV_SWITCH}=0: the CPU attention runs as PyTorch ops',
                  logger='current')
        return None
    build = build_for(torch.backends.cpu.get_cpu_capability())
    openmp = ['-fopenmp'] if OPENMP else []  # binds to torch's own libgomp (same soname)
    try:
        from torch.utils.cpp_extension import load
        print_log(f'mmswinv2: loading the CPU attention kernel ({build}; compiled on first use, '
                  'about 20 s)', logger='current')
        load(f'mmswinv2_window_attention_{build}', [SOURCE],
             extra_cflags=['-O3', *openmp, *BUILD_FLAGS[build]], extra_ldflags=openmp,
             is_python_module=False, verbose=False)
    except Exception as err:  # noqa: BLE001 - any failure: say why, run the PyTorch ops
        import logging
        print_log(f'mmswinv2: the CPU attention kernel could not be built ({err}); the '
                  'attention runs as PyTorch ops, about 1.1x slower. It needs a C++ compiler '
                  f'and ninja (pip install ninja); {ENV_SWITCH}=0 silences this.',
                  logger='current', level=logging.WARNING)
        return None
    return build
