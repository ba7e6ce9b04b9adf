"""Side-by-side speed of mmswinv2's SwinV2 backbone and the reference implementations.

    python tools/benchmark.py [--device cpu|cuda] [--batch 8] [--size 256] [--window 8]
                              [--arch tiny] [--mode infer|train] [--dtype fp32|fp16|bf16]
                              [--iters 10] [--warmup 3] [--threads N]
    python tools/benchmark.py --suite sequential [--sizes 1536 2048] [--window 16]
                              [--chunk 64] [--threads N]

Default suite: every model is SwinV2 at the same size/window with random weights, timed in one
process, one after another, on the same input: images/s, ratio to our default (explicit)
attention path and, on CUDA, peak memory. References are skipped (and say why) when they cannot
be imported: HF transformers ``Swinv2Model`` and timm ``swinv2_*`` (timm needs torchvision).

``--suite sequential``: our backbone at high resolution (batch 1), all windows in one attention
call against ``attn_chunk_windows=--chunk``: a forward at each of ``--sizes``, and a training
step (forward + backward) with ``with_cp`` at the first size. Each row runs in a fresh
subprocess (one iteration after one warm-up) and reports its time and its peak memory above
what the model and input already held (CPU: the process's peak resident set size, from
``getrusage``; CUDA: ``max_memory_allocated``).

Results go to stdout as a Markdown table; record them in docs/benchmarks.md with the machine.
"""
import argparse
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
from mmswinv2 import SwinTransformerV2  # noqa: E402

DTYPES = dict(fp32=torch.float32, fp16=torch.float16, bf16=torch.bfloat16)
TIMM_NAMES = {('tiny', 8): 'swinv2_tiny_window8_256', ('tiny', 16): 'swinv2_tiny_window16_256',
              ('small', 8): 'swinv2_small_window8_256', ('small', 16): 'swinv2_small_window16_256',
              ('base', 8): 'swinv2_base_window8_256', ('base', 16): 'swinv2_base_window16_256'}


def candidates(args):
    """(name, builder) pairs; a builder returns a model or raises ImportError."""
    def ours(fused):
        return lambda: SwinTransformerV2(arch=args.arch, window_size=args.window,
                                         drop_path_rate=0., fused_attention=fused)

    def hf():
        from transformers import Swinv2Config, Swinv2Model
        arch = SwinTransformerV2(arch=args.arch)
        config = Swinv2Config(image_size=args.size, window_size=args.window,
                              embed_dim=arch.embed_dims, depths=list(arch.depths),
                              num_heads=list(arch.num_heads), drop_path_rate=0.)
        return Swinv2Model(config, add_pooling_layer=False)

    def timm():
        import timm as timm_lib
        name = TIMM_NAMES.get((args.arch, args.window))
        if name is None:
            raise ImportError(f'no timm model for arch {args.arch} window {args.window}')
        return timm_lib.create_model(name, pretrained=False, img_size=args.size,
                                     num_classes=0, global_pool='')

    return [('mmswinv2 (explicit, default)', ours(False)), ('mmswinv2 (fused SDPA)', ours(True)),
            ('HF transformers Swinv2Model', hf), ('timm swinv2', timm)]


def time_model(model, x, args):
    model = model.to(args.device)
    train = args.mode == 'train'
    model.train(train)
    autocast = torch.autocast(device_type=x.device.type, dtype=DTYPES[args.dtype],
                              enabled=args.dtype != 'fp32')

    def step():
        with autocast, torch.set_grad_enabled(train):
            out = model(x)
            out = out[-1] if isinstance(out, (tuple, list)) else getattr(
                out, 'last_hidden_state', out)
            if train:
                out.float().mean().backward()

    for _ in range(args.warmup):
        step()
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    if x.is_cuda:
        torch.cuda.reset_peak_memory_stats()
    sync()
    start = time.perf_counter()
    for _ in range(args.iters):
        step()
    sync()
    seconds = time.perf_counter() - start
    memory = torch.cuda.max_memory_allocated() / 2**30 if x.is_cuda else None
    return args.iters * x.shape[0] / seconds, memory


def sequential_row(args, size, chunk, train):
    """Time and transient peak memory of one forward (or training step with ``with_cp``) of a
    batch-1 ``size`` x ``size`` image; run in its own process so the peak is its own."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = SwinTransformerV2(arch=args.arch, window_size=args.window, drop_path_rate=0.,
                              attn_chunk_windows=chunk, with_cp=train).to(args.device)
    model.train(train)
    x = torch.randn(1, 3, size, size, device=args.device)

    def step():
        with torch.set_grad_enabled(train):
            out = model(x)
            if train:
                sum(o.float().mean() for o in out).backward()
        if x.is_cuda:
            torch.cuda.synchronize()

    # What the model and input hold; the peak is over the warm-up and the timed step.
    if x.is_cuda:
        torch.cuda.reset_peak_memory_stats()
        held = torch.cuda.memory_allocated()
    else:
        held = _resident_bytes()
    step()  # warm-up
    start = time.perf_counter()
    step()
    seconds = time.perf_counter() - start
    if x.is_cuda:
        peak = torch.cuda.max_memory_allocated() - held
    else:
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - held
    return dict(seconds=seconds, peak_gib=peak / 2**30)


def _resident_bytes():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def sequential_suite(args):
    """Chunked against unchunked attention at high resolution (see the module docstring)."""
    import json
    import subprocess
    rows = [(size, False) for size in args.sizes] + [(args.sizes[0], True)]
    print(f'SwinV2-{args.arch} window {args.window}, batch 1, fp32; torch {torch.__version__}; '
          f'{_device_name(args)}; one iteration after one warm-up, each row in its own process\n')
    print('| input | step | attn_chunk_windows | seconds | transient peak memory (GiB) | '
          'memory ratio to unchunked |')
    print('|---|---|---|---|---|---|')
    for size, train in rows:
        unchunked = None
        for chunk in (0, args.chunk):
            command = [sys.executable, __file__, '--suite', 'sequential-row', '--arch', args.arch,
                       '--window', str(args.window), '--device', args.device,
                       '--sizes', str(size), '--chunk', str(chunk)] + (
                ['--mode', 'train'] if train else []) + (
                ['--threads', str(args.threads)] if args.threads else [])
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                print(f'| {size}x{size} | {"train, with_cp" if train else "forward"} | {chunk} |'
                      f' failed: {done.stderr.strip().splitlines()[-1]} | | |')
                continue
            row = json.loads(done.stdout.strip().splitlines()[-1])
            unchunked = unchunked or row['peak_gib']
            print(f'| {size}x{size} | {"train, with_cp" if train else "forward"} | {chunk} | '
                  f'{row["seconds"]:.2f} | {row["peak_gib"]:.2f} | '
                  f'{row["peak_gib"] / unchunked:.2f} |', flush=True)


def _device_name(args):
    if args.device.startswith('cuda'):
        return torch.cuda.get_device_name()
    return f'{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads'


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--suite', default='backbones',
                        choices=['backbones', 'sequential', 'sequential-row'],
                        help='what to measure (see above; sequential-row is one row of it)')
    parser.add_argument('--sizes', type=int, nargs='+', default=[1536, 2048],
                        help='sequential: input sizes')
    parser.add_argument('--chunk', type=int, default=64,
                        help='sequential: attn_chunk_windows of the chunked rows')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--arch', default='tiny', choices=['tiny', 'small', 'base'])
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--size', type=int, default=256)
    parser.add_argument('--window', type=int, default=None,
                        help='window (default 8; sequential: 16)')
    parser.add_argument('--mode', default='infer', choices=['infer', 'train'])
    parser.add_argument('--dtype', default='fp32', choices=list(DTYPES))
    parser.add_argument('--iters', type=int, default=10)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--threads', type=int, default=None, help='CPU threads (torch)')
    args = parser.parse_args()
    if args.window is None:
        args.window = 8 if args.suite == 'backbones' else 16
    if args.suite == 'sequential-row':
        import json
        print(json.dumps(sequential_row(args, args.sizes[0], args.chunk, args.mode == 'train')))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.suite == 'sequential':
        sequential_suite(args)
        return
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size, device=args.device)
    device = _device_name(args)
    print(f'SwinV2-{args.arch} window {args.window}, {args.size}x{args.size}, batch {args.batch},'
          f' {args.mode}, {args.dtype}, {args.iters} iters after {args.warmup} warm-up; '
          f'torch {torch.__version__}; {device}\n')
    print('| model | images/s | ratio to mmswinv2 default | peak GPU memory (GiB) |')
    print('|---|---|---|---|')
    baseline = None
    for name, build in candidates(args):
        try:
            model = build()
        except ImportError as err:
            print(f'| {name} | skipped: {err} | | |')
            continue
        speed, memory = time_model(model, x, args)
        baseline = baseline or speed
        mem = f'{memory:.2f}' if memory is not None else 'n/a (CPU)'
        print(f'| {name} | {speed:.2f} | {speed / baseline:.2f} | {mem} |', flush=True)
        del model


if __name__ == '__main__':
    main()
