"""Side-by-side speed of mmswinv2's SwinV2 backbone and the reference implementations.

    python tools/benchmark.py [--device cpu|cuda] [--batch 8] [--size 256] [--window 8]
                              [--arch tiny] [--mode infer|train] [--dtype fp32|fp16|bf16]
                              [--iters 10] [--warmup 3] [--threads N]

Every model is SwinV2 at the same size/window with random weights, timed in one process, one
after another, on the same input: images/s, ratio to our default (explicit) attention path and,
on CUDA, peak memory. References are skipped (and say why) when they cannot be imported:
HF transformers ``Swinv2Model`` and timm ``swinv2_*`` (timm needs torchvision).
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--arch', default='tiny', choices=['tiny', 'small', 'base'])
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--size', type=int, default=256)
    parser.add_argument('--window', type=int, default=8)
    parser.add_argument('--mode', default='infer', choices=['infer', 'train'])
    parser.add_argument('--dtype', default='fp32', choices=list(DTYPES))
    parser.add_argument('--iters', type=int, default=10)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--threads', type=int, default=None, help='CPU threads (torch)')
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size, device=args.device)

    device = (torch.cuda.get_device_name() if x.is_cuda else
              f'{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads')
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
