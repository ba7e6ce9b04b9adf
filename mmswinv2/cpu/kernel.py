"""The CPU attention kernel (``csrc/window_attention.cpp``): built ahead of time, loaded if found.

``python -m mmswinv2.cpu.build`` (run by ``make install``) compiles the kernel with
``torch.utils.cpp_extension`` for the vector instructions PyTorch uses on this CPU
(``torch.backends.cpu.get_cpu_capability()``, which ``ATEN_CPU_CAPABILITY`` can lower) and
the ones below it. A library is named after its build, the source, the flags and the torch
version, so a stale one is never loaded. At run time :func:`available` loads the library for
the current capability if it is there; if it is not, one info line says how to build it and
the attention runs as PyTorch ops. Nothing is compiled at run time.

The libraries live in ``$MMSWINV2_KERNEL_DIR``, else in ``mmswinv2/cpu/lib`` (not tracked).
``MMSWINV2_CPU_KERNEL=0`` turns the kernel off.
"""
import hashlib
import os
import platform
import threading
from typing import List, Optional

import torch

SOURCE = os.path.join(os.path.dirname(__file__), 'csrc', 'window_attention.cpp')
DIR_VARIABLE = 'MMSWINV2_KERNEL_DIR'
SWITCH_VARIABLE = 'MMSWINV2_CPU_KERNEL'

#: Whether PyTorch's intra-op threads are OpenMP's (then the kernel is built with OpenMP).
OPENMP = 'parallel backend: OpenMP' in torch.__config__.parallel_info()

#: Compiler flags per build: at::vec's 512-bit or 256-bit vectors on x86 (the instruction sets
#: PyTorch compiles its own kernels of that capability with), its portable vectors elsewhere.
BUILD_FLAGS = {
    'avx512': ['-mavx512f', '-mavx512bw', '-mavx512vl', '-mavx512dq', '-mfma',
               '-DCPU_CAPABILITY_AVX512', '-DCPU_CAPABILITY=AVX512'],
    'avx2': ['-mavx2', '-mfma', '-mf16c', '-DCPU_CAPABILITY_AVX2', '-DCPU_CAPABILITY=AVX2'],
    'default': ['-DCPU_CAPABILITY=DEFAULT'],
}

_lock = threading.Lock()
_tried = False
#: The build loaded in this process (a key of :data:`BUILD_FLAGS`), or None.
loaded_build: Optional[str] = None


def build_for(capability: Optional[str] = None) -> str:
    """The build for PyTorch's CPU capability (default: the current one)."""
    capability = capability or torch.backends.cpu.get_cpu_capability()
    if platform.machine().lower() in ('x86_64', 'amd64'):
        if capability.startswith('AVX512'):
            return 'avx512'
        if capability == 'AVX2':
            return 'avx2'
    return 'default'


def builds_this_cpu_runs() -> List[str]:
    """The current build and the ones below it (what ``ATEN_CPU_CAPABILITY`` can select)."""
    order = list(BUILD_FLAGS)
    return order[order.index(build_for()):]


def compiler_flags(build: str) -> List[str]:
    return ['-O3', *(['-fopenmp'] if OPENMP else []), *BUILD_FLAGS[build]]


def library_name(build: str) -> str:
    """``mmswinv2_window_attention_<build>_<hash of source, flags and torch version>``."""
    with open(SOURCE, 'rb') as f:
        digest = hashlib.sha256(f.read())
    digest.update(' '.join(compiler_flags(build) + [torch.__version__]).encode())
    return f'mmswinv2_window_attention_{build}_{digest.hexdigest()[:12]}'


def library_dir() -> str:
    return os.environ.get(DIR_VARIABLE) or os.path.join(os.path.dirname(__file__), 'lib')


def library_path(build: str) -> str:
    return os.path.join(library_dir(), library_name(build), library_name(build) + '.so')


def window_attention(qkv: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor,
                     patterns: torch.Tensor, kinds: torch.Tensor,
                     first_window: int) -> torch.Tensor:
    """``(windows, N, C)`` attention of a ``(windows, N, 3 * C)`` qkv projection (see the
    source for the arguments); :func:`available` must be True."""
    return torch.ops.mmswinv2.window_attention(qkv, scale, bias, patterns, kinds, first_window)


def available() -> bool:
    """Whether the kernel is loaded; loads it at the first call of a process."""
    global _tried, loaded_build
    if not _tried:
        with _lock:
            if not _tried:
                loaded_build = _load()
                _tried = True
    return loaded_build is not None


def _load() -> Optional[str]:
    from mmengine.logging import print_log
    if os.environ.get(SWITCH_VARIABLE, '1') == '0':
        print_log(f'mmswinv2: {SWITCH_VARIABLE}=0: the CPU attention runs as PyTorch ops',
                  logger='current')
        return None
    build = build_for()
    path = library_path(build)
    if not os.path.isfile(path):
        print_log(f'mmswinv2: no CPU attention kernel built for this torch and CPU ({build}; '
                  f'looked for {path}): the attention runs as PyTorch ops. Build it once with '
                  f'`python -m mmswinv2.cpu.build` (make install does).', logger='current')
        return None
    torch.ops.load_library(path)
    return build
