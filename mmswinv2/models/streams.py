"""CPU inference of a batch in parallel streams.

In CPU inference the backbone can run a batch of several images as ``streams`` forwards of
parts of it at once, each in a thread of its own with an equal share of PyTorch's intra-op
threads, instead of one forward whose every op is split over all of them (what OpenVINO calls
throughput streams). A SwinV2 forward is a long chain of short ops; in streams no op pays for
splitting itself over threads, one stream's op can run while the other's Python prepares its
next, and each stream's thread allocates from a glibc arena of its own, which keeps its memory
between forwards. Measured (SwinV2-T, fp32, 8 x 256², Intel Xeon, 2 threads, per forward):
CPU time 0.95-1.07 s against 1.09-1.22 s, page faults 0.01-1.6 k against 7.9-11 k; the speed:
see :data:`STREAMS`. The images of a batch do not interact, so the result is the same as one
forward's (up to rounding: oneDNN may block a product differently for another number of
rows).

Used only where nothing can tell the difference: eager CPU inference (eval mode, no autograd
recording, no ``torch.compile`` or tracing), at least two images and two intra-op threads,
PyTorch's OpenMP backend (which keeps a thread count per thread), no profiler running, no
``TorchFunctionMode`` / ``TorchDispatchMode`` (both thread-local: a stream would not see
them) and no forward hooks on the backbone's modules (they would see parts of the batch, in
other threads). The streams run under the caller's grad mode, inference mode and CPU autocast;
an exception in one is raised in the caller once all have stopped.

**Threads.** A pool of ``streams`` threads per process, made at the first split: each thread
sets its intra-op thread count once with ``torch.set_num_threads``, which also sets
PyTorch's process-wide default (for threads started later) and the size of its pthreadpool;
the caller's count is set back as soon as the pool's threads have theirs. A change of the
caller's thread count makes a new pool.
"""
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from torch.nn.modules import module as nn_module

from .attention import spans
from .cpu_kernel import OPENMP
from .lean_autograd import eager_cpu_inference

#: Default number of streams. SwinV2-T, 8 x 256², Intel Xeon (2 cores), 2 threads, in one
#: process, alternating with one forward of the whole batch (three runs of 30 alternations):
#: fp32 1.02-1.03x faster, bf16 autocast 1.09-1.15x.
STREAMS = 2

#: (process, streams, threads per stream) -> pool; a forked child makes its own.
_pools: Dict[Tuple[int, int, int], ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def stream_parts(module: nn.Module, x: torch.Tensor,
                 streams: int) -> Optional[List[Tuple[int, int]]]:
    """``(start, stop)`` image ranges of the batch ``x`` for ``module``'s forward to run as
    parallel streams (at most ``streams``, each with one intra-op thread or more), or None
    where streams do not apply (see the module docstring)."""
    # (eager first: while Dynamo traces, nothing below may run)
    if streams < 2 or not OPENMP or not eager_cpu_inference(x, *module.parameters()):
        return None
    batch = x.shape[0]
    count = min(streams, batch, torch.get_num_threads())
    if (count < 2 or module.training or torch._C._autograd._profiler_enabled()
            or torch._C._len_torch_function_stack() or torch._C._len_torch_dispatch_stack()
            or _hooked(module)):
        return None
    return spans(batch, -(-batch // count))


def run_in_streams(forward: Callable[[torch.Tensor], Tuple[torch.Tensor, ...]],
                   x: torch.Tensor, parts: List[Tuple[int, int]]) -> Tuple[torch.Tensor, ...]:
    """``forward(x)`` as ``forward`` of each part of the batch, in parallel threads, the
    outputs concatenated; ``forward`` returns a tuple of tensors with the batch first."""
    pool = _pool(len(parts), torch.get_num_threads() // len(parts))
    state = (torch.is_grad_enabled(), torch.is_inference_mode_enabled(),
             torch.is_autocast_enabled('cpu'), torch.get_autocast_dtype('cpu'),
             torch.is_autocast_cache_enabled())
    futures = [pool.submit(_run, forward, x[start:stop], state) for start, stop in parts]
    wait(futures)  # every stream has stopped before any error is raised
    outputs = [future.result() for future in futures]
    return tuple(torch.cat(level) for level in zip(*outputs))


def _run(forward, x, state):
    grad, inference, autocast, autocast_dtype, autocast_cache = state
    with torch.inference_mode(inference), torch.set_grad_enabled(grad), \
            torch.autocast('cpu', dtype=autocast_dtype, enabled=autocast,
                           cache_enabled=autocast_cache):
        return forward(x)


def _hooked(module: nn.Module) -> bool:
    """Whether a forward hook would run on one of ``module``'s submodules."""
    if nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks
               for m in module.modules() if m is not module)


def _pool(streams: int, threads: int) -> ThreadPoolExecutor:
    """The pool of ``streams`` threads with ``threads`` intra-op threads each."""
    key = (os.getpid(), streams, threads)
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            for old in [k for k in _pools if k[0] == key[0]]:
                _pools.pop(old).shutdown(wait=False)
            pool = ThreadPoolExecutor(streams, thread_name_prefix='mmswinv2-stream')
            caller = torch.get_num_threads()
            # one task per thread: each waits until all threads have one
            ready = threading.Barrier(streams, timeout=60)
            try:
                for future in [pool.submit(_set_threads, threads, ready)
                               for _ in range(streams)]:
                    future.result()
            except BaseException:
                pool.shutdown(wait=False)
                raise
            finally:
                torch.set_num_threads(caller)
            _pools[key] = pool
    return pool


def _set_threads(threads: int, ready: threading.Barrier) -> None:
    torch.get_num_threads()  # this thread's lazy initialisation, which would reset the count
    torch.set_num_threads(threads)
    ready.wait()
