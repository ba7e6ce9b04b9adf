"""Side-by-side speed and memory of mmswinv2's SwinV2 backbone and the reference implementations.

    python tools/benchmark.py [--device cpu|cuda] [--batch 8] [--size 256 [W]] [--window 8]
                              [--arch tiny] [--mode infer|train] [--dtype fp32|fp16|bf16]
                              [--compile] [--iters 10] [--warmup 3] [--rounds 1]
                              [--threads N] [--json F]
    python tools/benchmark.py --suite sequential [--sizes 1536 2048] [--window 16]
                              [--chunk 64] [--threads N]
    python tools/benchmark.py --suite models [--mode infer|train] [--dtype fp32|bf16]
                              [--iters 3] [--warmup 1] [--threads N]
    python tools/benchmark.py --suite cpu-paths [--dtype fp32|bf16] [--batch 8] [--size 256]
                              [--iters 12] [--threads N]
    python tools/benchmark.py --suite deploy [--batch 8] [--size 256] [--threads N]
                              [--onnx-dir DIR] [--rounds R]

Default suite (``backbones``): SwinV2 at the same size and window with random weights, from
mmswinv2 (as users run it: on the CPU through ``mmswinv2.cpu``; the model as written, without
it; with fused SDPA attention), HF transformers ``Swinv2Model`` and timm ``swinv2_*``
(timm needs torchvision; a reference that cannot be imported is skipped and says why), and
MMDetection's Swin V1 at the same size (window 7), what detection users would pick instead,
on the same input. Each row runs in its own process; all of them are alive together and take
their timed steps in turn (step ``i`` of every row before step ``i + 1`` of any), so that the
rows are compared within seconds: a 2-core cloud machine drifts by 10-40 % between minutes, as
much as the implementations differ. Reported: images/s of the median step; the ratios to the
faster of HF and timm and to HF, paired step by step (the median of the per-step ratios, their
quartiles in brackets); and the peak memory above what the model and input held (CPU: the
process's peak resident set; CUDA: ``max_memory_allocated``). ``--dtype bf16|fp16`` runs under
``torch.autocast``. ``--compile`` adds a ``torch.compile``d row per model with its compile time
(the first call, with an empty Inductor cache) and its speed-up over the same model in eager
mode. ``--rounds R`` does all of it R times with fresh processes, and gives the range of the
rounds' speeds and each round's ratio. Below the table: the rate of a large matrix product in
the same type, measured in the same run, and the fraction of it our default row achieves (2 x
the multiply-accumulates MMEngine counts for the backbone, per second).

``--suite sequential``: our backbone at high resolution (batch 1), all windows in one attention
call against ``attn_chunk_windows=--chunk``: a forward at each of ``--sizes``, and a training
step (forward + backward) with ``with_cp`` at the first size, with the same time and memory
columns.

``--suite models``: whole models built from this project's configs with random weights:
Cascade Mask R-CNN at 800x1333 (padded to 800x1344) and UperNet at 512x2048, each with our
SwinV2-T and with MMDetection's / MMSegmentation's own Swin V1-T (configs ``*_swin_v1_tiny_*``,
what users would pick instead). ``infer``: ``model.predict`` of one image (test-time
post-processing included; a detector keeps its 100 best detections whatever their score, so
that both backbones give its heads the same work); ``train``: ``model.loss`` on generated
ground truth and its backward (the optimizer step excluded), for the recipe's per-GPU batch
(2) and, for UperNet, its 512x512 crop. Images/s, seconds per step and how many of them the
forward of the backbone and neck took (``extract_feat``; the rest is the heads, and in
training the backward), a detector's number of detections, the ratio of SwinV2-T to Swin
V1-T, and peak memory. Under bf16 a detector's heads run in fp32 (mmcv's CPU NMS has no bf16
kernel).

``--suite cpu-paths``: each CPU special path of ``mmswinv2.cpu`` against the same model with
that path turned off, in one process, the two forwards alternating (``--iters`` pairs after
warming both up): the compiled attention kernel, the packed linear layers, the pieces, and the
package as a whole against the model as written. The gain is the median of the pairs'
time ratios (off / on), with their quartiles. A path that gains less than 5 % goes.

``--suite deploy``: CPU inference of the backbone (fp32) in ONNX Runtime and OpenVINO against
eager PyTorch: ours (through ``mmswinv2.cpu``) and HF's eager models, and HF's ``Swinv2Model``
exported with ``torch.onnx.export(dynamo=True)`` at the input's size, run by each runtime with
``--threads`` threads (OpenVINO with f32 precision). Rows run as in the default suite (own
processes, stepped in turn). The exported files are cached in ``--onnx-dir``.

Results go to stdout as a Markdown table (and to ``--json``); record them in
docs/performance.md with the machine.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
from mmswinv2 import SwinTransformerV2  # noqa: E402
from mmswinv2.cpu import kernel as cpu_kernel  # noqa: E402

DTYPES = dict(fp32=torch.float32, fp16=torch.float16, bf16=torch.bfloat16)
TIMM_NAMES = {('tiny', 8): 'swinv2_tiny_window8_256', ('tiny', 16): 'swinv2_tiny_window16_256',
              ('small', 8): 'swinv2_small_window8_256', ('small', 16): 'swinv2_small_window16_256',
              ('base', 8): 'swinv2_base_window8_256', ('base', 16): 'swinv2_base_window16_256'}
OURS = 'mmswinv2'
#: Our backbone without mmswinv2.cpu (on CUDA the same as OURS, so not run there).
WRITTEN = 'mmswinv2, the model as written'
REFERENCES = ('HF transformers Swinv2Model', 'timm swinv2')
#: What detection users would pick instead: MMDetection's own Swin (V1) at the same size, window 7.
SWIN_V1 = 'MMDetection SwinTransformer (V1, window 7)'
MODELS = (OURS, WRITTEN, 'mmswinv2 (fused SDPA)') + REFERENCES + (SWIN_V1,)
#: The deploy suite's rows: (name, runtime, exported model).
DEPLOY_ROWS = (('mmswinv2, eager PyTorch', 'pytorch', 'mmswinv2'),
               ('HF, eager PyTorch', 'pytorch', 'hf'),
               ('ONNX Runtime, HF export', 'onnxruntime', 'hf'),
               ('OpenVINO, HF export', 'openvino', 'hf'))


def build(name, args, **options):
    """The model called ``name``; raises ImportError when its library is missing."""
    arch = SwinTransformerV2(arch=args.arch)
    if name.startswith('mmswinv2'):
        return SwinTransformerV2(arch=args.arch, window_size=args.window, drop_path_rate=0.,
                                 fused_attention=True if 'fused' in name else 'auto',
                                 cpu_inference=name == OURS, **options)
    if name == SWIN_V1:
        from mmdet.models.backbones import SwinTransformer
        return SwinTransformer(embed_dims=arch.embed_dims, depths=arch.depths,
                               num_heads=arch.num_heads, window_size=7, drop_path_rate=0.)
    if name.startswith('HF'):
        from transformers import Swinv2Config, Swinv2Model
        config = Swinv2Config(image_size=list(args.hw), window_size=args.window,
                              embed_dim=arch.embed_dims, depths=list(arch.depths),
                              num_heads=list(arch.num_heads), drop_path_rate=0.)
        return Swinv2Model(config, add_pooling_layer=False)
    import timm
    timm_name = TIMM_NAMES.get((args.arch, args.window))
    if timm_name is None:
        raise ImportError(f'no timm model for arch {args.arch} window {args.window}')
    return timm.create_model(timm_name, pretrained=False, img_size=tuple(args.hw),
                             num_classes=0, global_pool='')


def prepare(model, x, args, train, compile_model=False, forward=None, autocast_step=True):
    """A row's ``step()``, after its first call and ``args.warmup - 1`` more, with the compile
    time (the first call of a compiled model, else None) and the memory held before the first
    call. ``forward(model, x)`` returns the tensor a training step backpropagates from
    (default: a backbone's last output). ``autocast_step=False``: the step is not run under
    ``--dtype``'s autocast (the model applies it where it can)."""
    model = model.to(args.device)
    model.train(train)
    held = _memory_now(x)
    if compile_model:
        model = torch.compile(model)
    autocast = torch.autocast(device_type=x.device.type, dtype=DTYPES[args.dtype],
                              enabled=autocast_step and args.dtype != 'fp32')
    forward = forward or _last_output

    def step():
        with autocast, torch.set_grad_enabled(train):
            out = forward(model, x)
            if train:
                out.float().mean().backward()
        if x.is_cuda:
            torch.cuda.synchronize()

    start = time.perf_counter()
    step()
    compile_s = time.perf_counter() - start if compile_model else None
    for _ in range(args.warmup - 1):
        step()
    return step, compile_s, held


def _last_output(model, x):
    out = model(x)
    return out[-1] if isinstance(out, (tuple, list)) else getattr(out, 'last_hidden_state', out)


def _memory_now(x):
    if x.is_cuda:
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def _peak(x):
    if x.is_cuda:
        return torch.cuda.max_memory_allocated()
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def matmul_rate(args):
    """GFLOP/s of a 2048^3 matrix product in the benchmark's type (fp32, or the autocast type):
    after one product to warm up, one timed product sizes the run, about a second of products
    (one to ten; the timed one alone where it took a second or more). (bf16 on a CPU without
    bf16 instructions: PyTorch's generic loop, a minute per product on an AVX2 EPYC.)"""
    a = torch.randn(2048, 2048, device=args.device, dtype=DTYPES[args.dtype])
    b = torch.randn(2048, 2048, device=args.device, dtype=DTYPES[args.dtype])

    def products(runs):
        start = time.perf_counter()
        for _ in range(runs):
            a @ b
        if a.is_cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start
    products(1)  # warm-up (on CUDA it also starts cuBLAS)
    one = products(1)
    runs = max(1, min(10, int(1.0 / one)))
    seconds = one if runs == 1 else products(runs)
    return 2 * 2048**3 * runs / seconds / 1e9


def backbone_macs(args):
    """Multiply-accumulates of our backbone on one image (MMEngine's counters)."""
    from mmengine.analysis import FlopAnalyzer
    model = build(OURS, args).eval()
    analyzer = FlopAnalyzer(model, torch.randn(1, 3, *args.hw))
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    return analyzer.total()


# ---- whole detectors and segmentors ---------------------------------------------------------

#: name -> (config, input height and width): SwinV2-T and Swin V1-T in the same model.
WHOLE_MODELS = {
    'Cascade Mask R-CNN, SwinV2-T': ('configs/det/cascade_swinv2_tiny_coco.py', (800, 1333)),
    'Cascade Mask R-CNN, Swin V1-T (MMDetection)': ('configs/det/cascade_swin_v1_tiny_coco.py',
                                                    (800, 1333)),
    'UperNet, SwinV2-T': ('configs/seg/upernet_swinv2_tiny_ade20k.py', (512, 2048)),
    'UperNet, Swin V1-T (MMSegmentation)': ('configs/seg/upernet_swin_v1_tiny_ade20k.py',
                                            (512, 2048)),
}


def whole_model(name, args):
    """(model, batched input, forward, whether the whole step runs in autocast) of one
    :data:`WHOLE_MODELS` entry with random weights.

    Inference: one image of the entry's size, padded as the model's data preprocessor pads it;
    forward predicts. A detector keeps its ``max_per_img`` (100) best detections whatever their
    score, the most its recipe lets it return: with random weights the score threshold keeps
    a number that depends on the backbone's random features (49 against 0 seen), and with it
    the mask head's work. Training: the recipe's per-GPU batch
    (``train_dataloader.batch_size``) of the entry's size, or of the recipe's crop for
    segmentation; forward returns the summed losses on generated ground truth. Under ``--dtype
    bf16|fp16`` a detector's backbone and neck run in autocast and its heads in fp32: mmcv's
    CPU NMS has no bf16 kernel."""
    from mmengine.config import Config
    from mmswinv2.launch import build_model, codebase_of
    path, (h, w) = WHOLE_MODELS[name]
    cfg = Config.fromfile(os.path.join(os.path.dirname(__file__), '..', path))
    cfg.model.backbone.init_cfg = None
    cfg.model.backbone.drop_path_rate = 0.
    codebase = codebase_of(cfg, path)
    train = args.mode == 'train'
    batch = cfg.train_dataloader.batch_size if train else 1
    if codebase == 'mmseg':
        cfg.model.test_cfg = dict(mode='whole')  # the whole 512x2048 image in one forward
        if train:
            h, w = cfg.crop_size
    else:
        cfg.model.test_cfg.rcnn.score_thr = 0.
    model = build_model(cfg, codebase)
    divisor = cfg.model.data_preprocessor.get('pad_size_divisor', 1) or 1
    padded = (-(-h // divisor) * divisor, -(-w // divisor) * divisor)
    x = torch.randn(batch, 3, *padded, device=args.device)
    samples = [_data_sample(codebase, (h, w), padded, args.device) for _ in range(batch)]
    heads_in_autocast = codebase == 'mmseg'
    model.extract_feat = _timed_features(model.extract_feat, args, not heads_in_autocast)

    def forward(model, x):
        if model.training:
            return model.parse_losses(model.loss(x, samples))[0]  # the summed losses
        results = model.predict(x, samples)
        if codebase == 'mmdet':
            forward.detections = len(results[0].pred_instances)
        return results
    forward.detections = None
    return model, x, forward, heads_in_autocast


def _timed_features(extract_feat, args, own_autocast):
    """``extract_feat`` (backbone and neck) that records its duration of each call in
    ``run.seconds``; with ``own_autocast`` it runs under ``--dtype``'s autocast itself and
    returns fp32 features."""
    def run(x):
        start = time.perf_counter()
        if own_autocast:
            with torch.autocast(x.device.type, dtype=DTYPES[args.dtype],
                                enabled=args.dtype != 'fp32'):
                features = tuple(f.float() for f in extract_feat(x))
        else:
            features = extract_feat(x)
        if x.is_cuda:
            torch.cuda.synchronize()
        run.seconds.append(time.perf_counter() - start)
        return features
    run.seconds = []
    return run


def _data_sample(codebase, hw, padded, device):
    """A data sample with the meta information of one resized image and random ground truth:
    10 boxes with masks (detection) or a label map of 150 classes (segmentation)."""
    import numpy as np
    from mmengine.structures import InstanceData, PixelData
    meta = dict(img_shape=hw, ori_shape=hw, pad_shape=padded, batch_input_shape=padded,
                scale_factor=(1.0, 1.0))
    generator = torch.Generator().manual_seed(0)
    if codebase == 'mmseg':
        from mmseg.structures import SegDataSample
        sample = SegDataSample(metainfo=meta)
        labels = torch.randint(0, 150, (1, *padded), generator=generator)
        sample.gt_sem_seg = PixelData(data=labels.to(device))
        return sample
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    sample = DetDataSample(metainfo=meta)
    corners = torch.rand(10, 2, 2, generator=generator) * torch.tensor(hw[::-1])
    boxes = torch.cat([corners.min(1).values, corners.max(1).values + 16], dim=1)
    masks = np.zeros((10, *hw), dtype=np.uint8)
    for mask, (x0, y0, x1, y1) in zip(masks, boxes.int().tolist()):
        mask[y0:y1, x0:x1] = 1
    sample.gt_instances = InstanceData(bboxes=boxes.to(device),
                                       labels=torch.randint(0, 80, (10,), generator=generator)
                                       .to(device),
                                       masks=BitmapMasks(masks, *hw))
    return sample


def models_suite(args):
    """Whole detectors / segmentors with SwinV2-T against Swin V1-T (see the module docstring)."""
    batch = ("the recipe's training batch (2) and crop" if args.mode == 'train'
             else 'batch 1')
    print(f'Whole models, random weights, {batch}, {args.mode}, {args.dtype}, {_method(args)}; '
          f'torch {torch.__version__}; {_device_name(args)}\n')
    print('| model | input (batch x padded size) | images/s | seconds per step | of which '
          'backbone + neck (forward) | detections | SwinV2-T / Swin V1-T | peak memory (GiB) |')
    print('|---|---|---|---|---|---|---|---|')
    names = [name for name in WHOLE_MODELS if _selected(args, name)]
    rows = [dict(result, model=name)
            for name, result in zip(names, run_rows(args, [['--row', name] for name in names]))]
    for result in rows:
        name = result['model']
        if 'error' in result:
            print(f"| {name} | | failed: {result['error']} | | | | | |", flush=True)
            continue
        size = 'x'.join(map(str, result['input_hw']))
        ratio = ''
        if 'V1' in name:
            v2 = next((r for r in rows if r['model'] == name.split(',')[0] + ', SwinV2-T'
                       and 'error' not in r), None)
            ratio = _ratio(v2, [result], 'ratio_to_v1') if v2 else ''
        print(f"| {name} | {result['batch']} x {size} | {_speed(result, 3)} | "
              f"{result['seconds_per_step']:.2f} | {result['features_s']:.2f} | "
              f"{result['detections'] if result['detections'] is not None else ''} | {ratio} | "
              f"{result['peak_gib']:.2f} |", flush=True)
    return dict(rows=rows)


# ---- deployment runtimes -------------------------------------------------------------------

def _hf_model(args):
    from transformers import Swinv2Config, Swinv2Model
    arch = SwinTransformerV2(arch=args.arch)
    config = Swinv2Config(image_size=list(args.hw), window_size=args.window,
                          embed_dim=arch.embed_dims, depths=list(arch.depths),
                          num_heads=list(arch.num_heads), drop_path_rate=0.)
    return Swinv2Model(config, add_pooling_layer=False).eval()


class _LastHiddenState(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(pixel_values=x).last_hidden_state


def export_file(args, which):
    """The ONNX file of ``which`` ('hf') at ``--batch`` x ``--size``, exported once into
    ``--onnx-dir``."""
    os.makedirs(args.onnx_dir, exist_ok=True)
    path = os.path.join(args.onnx_dir, f'{which}_{args.arch}_w{args.window}_{args.batch}x'
                                       f'{args.hw[0]}x{args.hw[1]}.onnx')
    if not os.path.isfile(path):
        torch.manual_seed(0)
        x = torch.randn(args.batch, 3, *args.hw)
        program = torch.onnx.export(_LastHiddenState(_hf_model(args)), (x,), dynamo=True,
                                    opset_version=18, input_names=['x'], verbose=False)
        program.save(path + '.part')
        os.replace(path + '.part', path)
    return path


def deploy_row(args, x):
    """``(step, memory held)`` of one deploy row: an eager model or a runtime session."""
    name = args.row
    _, runtime, which = next(r for r in DEPLOY_ROWS if r[0] == name)
    held = _memory_now(x)
    if runtime == 'pytorch':
        model = (SwinTransformerV2(arch=args.arch, window_size=args.window, drop_path_rate=0.)
                 .eval() if which == 'mmswinv2' else _hf_model(args))

        def step():
            with torch.inference_mode():
                model(x) if which == 'mmswinv2' else model(pixel_values=x)
    else:
        path, array = args.onnx, x.numpy()
        if runtime == 'onnxruntime':
            import onnxruntime as ort
            options = ort.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            options.inter_op_num_threads = 1
            session = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
            feed = {session.get_inputs()[0].name: array}

            def step():
                session.run(None, feed)
        else:
            import openvino as ov
            request = ov.Core().compile_model(path, 'CPU', {
                'INFERENCE_NUM_THREADS': torch.get_num_threads(),
                'INFERENCE_PRECISION_HINT': 'f32'}).create_infer_request()

            def step():
                request.infer({0: array})
    for _ in range(args.warmup):
        step()
    return step, held


def deploy_suite(args):
    """Eager PyTorch against ONNX Runtime and OpenVINO (see the module docstring)."""
    import importlib.metadata as metadata
    versions = ', '.join(f'{name} {metadata.version(name)}'
                         for name in ('onnxruntime', 'openvino'))
    print(f'SwinV2-{args.arch} window {args.window}, {args.hw[0]}x{args.hw[1]}, batch '
          f'{args.batch}, inference, fp32, {_method(args)}; torch {torch.__version__}, '
          f'{versions}; {_device_name(args)}\n')
    print('| runtime, model | images/s | ratio of mmswinv2 eager to this row | peak memory (GiB) |')
    print('|---|---|---|---|')
    wanted = [r for r in DEPLOY_ROWS if _selected(args, r[0])]
    extra = [['--row', name] + (['--onnx', export_file(args, which)] if runtime != 'pytorch'
                                else []) for name, runtime, which in wanted]
    rows = [dict(result, model=name) for (name, _, _), result in zip(wanted, run_rows(args, extra))]
    ours = next((r for r in rows if r['model'] == DEPLOY_ROWS[0][0] and 'error' not in r), None)
    for r in rows:
        if 'error' in r:
            print(f"| {r['model']} | failed: {r['error']} | | |")
            continue
        ratio = _ratio(ours, [r], 'ratio') if ours is not None else 'n/a'
        print(f"| {r['model']} | {_speed(r, 2)} | {ratio} | {r['peak_gib']:.2f} |", flush=True)
    return dict(rows=rows)


# ---- one row, in its own process ----------------------------------------------------------

def row(args):
    """One row (``--row NAME``), the child process of a :class:`RowProcess`: build the model and
    warm it up, send a JSON line, then time one step for each line read from stdin and send
    its seconds; at the end of stdin a last line with the peak memory (and for a whole model
    the seconds its backbone + neck took in each step, and its number of detections). The
    JSON lines go to the original stdout; whatever else is printed goes to stderr."""
    channel = os.fdopen(os.dup(sys.stdout.fileno()), 'w', buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    torch.manual_seed(0)
    train = args.mode == 'train'
    if args.suite == 'models':
        model, x, forward, autocast_step = whole_model(args.row, args)
        step, compile_s, held = prepare(model, x, args, train, forward=forward,
                                        autocast_step=autocast_step)
    elif args.suite == 'deploy':
        x = torch.randn(args.batch, 3, *args.hw)
        step, held = deploy_row(args, x)
        compile_s = None
    else:
        x = torch.randn(args.batch, 3, *args.hw, device=args.device)
        if args.suite == 'sequential':
            model = SwinTransformerV2(arch=args.arch, window_size=args.window,
                                      drop_path_rate=0., attn_chunk_windows=args.chunk,
                                      with_cp=train)
        else:
            model = build(args.row, args)
        step, compile_s, held = prepare(model, x, args, train, args.compiled)
    _send(channel, dict(batch=x.shape[0], input_hw=list(x.shape[2:]), compile_s=compile_s,
                        cpu_kernel=cpu_kernel.loaded_build))  # what the warm-up loaded
    steps = 0
    for _ in sys.stdin:
        start = time.perf_counter()
        step()
        _send(channel, dict(seconds=time.perf_counter() - start))
        steps += 1
    last = dict(peak_gib=(_peak(x) - held) / 2**30)
    if args.suite == 'models':
        calls = model.extract_feat.seconds  # one per call: the warm-up's, then the steps'
        last.update(features_s=calls[len(calls) - steps:], detections=forward.detections)
    _send(channel, last)


def _send(channel, message):
    channel.write(json.dumps(message) + '\n')


class RowProcess:
    """One row in a fresh process (:func:`row`), which takes a timed step when asked. Starting
    returns once the child has built and warmed up its model. A compiled row gets an empty
    Inductor cache, so that its compile time is a compile's, not a cache hit's. A child that
    fails leaves ``error``: the last line of its stderr."""

    def __init__(self, args, extra):
        self._cache = (tempfile.TemporaryDirectory(prefix='inductor-cache-')
                       if '--compiled' in extra else None)
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=self._cache.name) if self._cache else None
        self._stderr = tempfile.TemporaryFile(mode='w+')
        self._child = subprocess.Popen([sys.executable, __file__, *args.argv, *extra],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=self._stderr, text=True, env=env)
        self.error = None
        self.seconds = []
        self.result = self._receive() or {}

    def step(self):
        """Time one step of the child's model (nothing once it has failed)."""
        if self.error is None and self._request('step\n'):
            reply = self._receive()
            if reply is not None:
                self.seconds.append(reply['seconds'])

    def finish(self) -> dict:
        """End the child: what it sent when ready and at the end, and ``seconds`` of its
        steps; or ``dict(error=...)``."""
        if self.error is None and self._request(None):
            last = self._receive()
            if last is not None:
                self.result.update(last)
        self._child.wait()
        for stream in (self._child.stdin, self._child.stdout, self._stderr):
            try:
                stream.close()
            except BrokenPipeError:  # input the child never read
                pass
        if self._cache is not None:
            self._cache.cleanup()
        return dict(error=self.error) if self.error else dict(self.result, seconds=self.seconds)

    def _request(self, line):
        """Send ``line`` to the child, or end its input if None; False if it has died."""
        try:
            if line is None:
                self._child.stdin.close()
            else:
                self._child.stdin.write(line)
                self._child.stdin.flush()
            return True
        except BrokenPipeError:
            self._failed()
            return False

    def _receive(self):
        line = self._child.stdout.readline()
        if line:
            return json.loads(line)
        self._failed()
        return None

    def _failed(self):
        self._child.wait()
        self._stderr.seek(0)
        self.error = (self._stderr.read().strip().splitlines() or ['failed'])[-1]


# ---- suites -------------------------------------------------------------------------------

def backbones_suite(args):
    print(f'SwinV2-{args.arch} window {args.window}, {args.hw[0]}x{args.hw[1]}, batch '
          f'{args.batch}, {args.mode}, {args.dtype}, {_method(args)}; torch '
          f'{torch.__version__}; {_device_name(args)}\n')
    print('| model | images/s | ratio to the faster of HF and timm | ratio to HF | compile (s) | '
          'compiled / eager | peak memory (GiB) |')
    print('|---|---|---|---|---|---|---|')
    wanted = [(name, compiled) for compiled in ([False, True] if args.compile else [False])
              for name in MODELS if _selected(args, name)
              and not (name == WRITTEN and (compiled or args.device != 'cpu'))]
    results = run_rows(args, [['--row', name] + (['--compiled'] if compiled else [])
                              for name, compiled in wanted])
    rows = [dict(result, model=name, compiled=compiled)
            for (name, compiled), result in zip(wanted, results)]
    for compiled in ([False, True] if args.compile else [False]):
        references = [r for r in rows if r['model'] in REFERENCES
                      and r['compiled'] == compiled and 'error' not in r]
        hf = [r for r in references if r['model'].startswith('HF')]
        for r in rows:
            if r['compiled'] != compiled:
                continue
            name = r['model'] + (', compiled' if compiled else '')
            if 'error' in r:
                print(f"| {name} | skipped: {r['error']} | | | | | |")
                continue
            ratio = _ratio(r, references, 'ratio_to_faster') if references else 'n/a'
            ratio_hf = _ratio(r, hf, 'ratio_to_hf') if hf else 'n/a'
            compile_s = speed_up = ''
            if compiled:
                compile_s = f"{r['compile_s']:.0f}"
                eager = next((e for e in rows if e['model'] == r['model'] and not e['compiled']
                              and 'error' not in e), None)
                if eager is not None:
                    r['speed_up'] = r['images_per_s'] / eager['images_per_s']
                    speed_up = f"{r['speed_up']:.2f}"
            print(f"| {name} | {_speed(r, 2)} | {ratio} | {ratio_hf} | {compile_s} | {speed_up} | "
                  f"{r['peak_gib']:.2f} |", flush=True)
    rate = matmul_rate(args)
    ours = next((r for r in rows if r['model'] == OURS and not r['compiled'] and 'error' not in r),
                None)
    summary = dict(matmul_gflops=rate)
    if ours is not None:
        macs = backbone_macs(args)
        passes = 3 if args.mode == 'train' else 1  # backward ~ 2x forward
        achieved = 2 * macs * passes * ours['images_per_s'] / 1e9
        summary.update(backbone_gmacs_per_image=macs / 1e9, achieved_gflops=achieved)
        kernel = f", its CPU attention kernel: {ours['cpu_kernel'] or 'not used'}" \
            if args.device == 'cpu' else ''
        print(f'\nmatrix product 2048^3 in {args.dtype}: {rate:.3g} GFLOP/s; {OURS}: '
              f'{macs / 1e9:.2f} GMACs per image (MMEngine), {achieved:.0f} GFLOP/s '
              f'({achieved / rate:.0%} of the matrix product rate){kernel}')
    return dict(rows=rows, **summary)


def _selected(args, name):
    """Whether ``--models`` selects the row ``name``."""
    return not args.models or any(word in name for word in args.models)


def _method(args):
    """The title's note on how the rows were timed (see :func:`run_rows`)."""
    rounds = f', {args.rounds} rounds with fresh processes' if args.rounds > 1 else ''
    return (f'{args.iters} steps of each row after {args.warmup} warm-up, each row in its own '
            f'process, the rows stepped in turn{rounds}')


def run_rows(args, rows, steps=None, rounds=None):
    """Each row of ``rows`` (a child's extra arguments) in its own process, all alive together:
    each builds and warms up its model alone, then step ``i`` of every row runs before step
    ``i + 1`` of any, the order rotating from step to step. So the rows' ``i``-th steps are
    timed within seconds of each other, whatever the machine's speed does over minutes (a
    2-core cloud machine drifts by 10-40 % between minutes, as much as the implementations
    differ), and their ratio is paired (see :func:`_ratio`). ``steps`` (default ``--iters``)
    steps per row; all of it ``rounds`` (default ``--rounds``) times, with fresh processes.

    Each row's result: its steps' seconds (``step_seconds``, a list per round); the median
    step (``seconds_per_step``) and its images/s; each round's median images/s
    (``runs_images_per_s``); the median peak memory and compile time over the rounds; for a
    whole model the median seconds of backbone + neck (``features_s``) and its detections.
    ``dict(error=...)`` if the row failed in any round."""
    steps = steps or args.iters
    runs = [[] for _ in rows]
    for _ in range(rounds or args.rounds):
        processes = [RowProcess(args, extra) for extra in rows]
        for i in range(steps):
            for k in range(len(processes)):
                processes[(i + k) % len(processes)].step()
        for results, process in zip(runs, processes):
            results.append(process.finish())
    return [_summary(results) for results in runs]


def _summary(results):
    """One row's result from its rounds' results (see :func:`run_rows`)."""
    failed = [r for r in results if 'error' in r]
    if failed:
        return failed[0]
    batch = results[0]['batch']
    step_seconds = [r['seconds'] for r in results]
    median_step = statistics.median(s for steps in step_seconds for s in steps)
    compile_s = [r['compile_s'] for r in results if r['compile_s'] is not None]
    summary = dict(batch=batch, input_hw=results[0]['input_hw'], step_seconds=step_seconds,
                   seconds_per_step=median_step, images_per_s=batch / median_step,
                   runs_images_per_s=[batch / statistics.median(s) for s in step_seconds],
                   peak_gib=statistics.median(r['peak_gib'] for r in results),
                   compile_s=statistics.median(compile_s) if compile_s else None,
                   cpu_kernel=results[0].get('cpu_kernel'))
    if 'features_s' in results[0]:
        summary.update(features_s=statistics.median(s for r in results for s in r['features_s']),
                       detections=results[-1]['detections'])
    return summary


def _speed(result, digits):
    """images/s of the median step, with the range of the rounds' when there were several."""
    runs = result['runs_images_per_s']
    spread = f' ({min(runs):.{digits}f}-{max(runs):.{digits}f})' if len(runs) > 1 else ''
    return f"{result['images_per_s']:.{digits}f}{spread}"


def _ratio(result, references, key):
    """``result``'s speed over the fastest of ``references`` (by images/s of the median step;
    all from the same :func:`run_rows`), paired step by step: the median over the steps of
    ``result``'s images/s in its ``i``-th step over the reference's in its ``i``-th, with the
    quartiles of those ratios in brackets and, with several rounds, each round's median.
    Returned as text and kept as ``result[key]`` (``median``, ``quartiles``, ``per_round``)."""
    reference = max(references, key=lambda r: r['images_per_s'])
    scale = result['batch'] / reference['batch']  # images per step
    per_round = [[scale * theirs / ours for ours, theirs in zip(mine, their_steps)]
                 for mine, their_steps in zip(result['step_seconds'], reference['step_seconds'])]
    ratios = [r for steps in per_round for r in steps]
    paired = result[key] = dict(median=statistics.median(ratios))
    text = f"{paired['median']:.2f}"
    if len(ratios) > 1:
        q1, _, q3 = statistics.quantiles(ratios, n=4, method='inclusive')
        paired['quartiles'] = [q1, q3]
        text += f' [{q1:.2f}-{q3:.2f}]'
    if len(per_round) > 1:
        paired['per_round'] = [statistics.median(r) for r in per_round]
        text += ' (rounds: ' + ', '.join(f'{v:.2f}' for v in paired['per_round']) + ')'
    return text


def sequential_suite(args):
    """Chunked against unchunked attention at high resolution (see the module docstring)."""
    print(f'SwinV2-{args.arch} window {args.window}, batch 1, fp32; torch {torch.__version__}; '
          f'{_device_name(args)}; one iteration after one warm-up, each row in its own process\n')
    print('| input | step | attn_chunk_windows | seconds | transient peak memory (GiB) | '
          'memory ratio to unchunked |')
    print('|---|---|---|---|---|---|')
    rows = []
    for size, train in [(size, False) for size in args.sizes] + [(args.sizes[0], True)]:
        unchunked = None
        for chunk in (0, args.chunk):
            result = run_rows(args, [['--row', 'sequential', '--size', str(size), '--chunk',
                                      str(chunk), '--batch', '1', '--warmup', '1']
                                     + (['--mode', 'train'] if train else [])],
                              steps=1, rounds=1)[0]
            step = 'train, with_cp' if train else 'forward'
            rows.append(dict(result, size=size, step=step, chunk=chunk))
            if 'error' in result:
                print(f"| {size}x{size} | {step} | {chunk} | failed: {result['error']} | | |")
                continue
            unchunked = unchunked or result['peak_gib']
            print(f"| {size}x{size} | {step} | {chunk} | {result['seconds_per_step']:.2f} | "
                  f"{result['peak_gib']:.2f} | {result['peak_gib'] / unchunked:.2f} |",
                  flush=True)
    return dict(rows=rows)


# ---- CPU paths, A/B in one process ---------------------------------------------------------

def _cpu_path_switches():
    """name -> a function that gives the "off" variant of an optimized model and the context
    that turns the path off while it runs."""
    import contextlib
    import copy
    from unittest import mock

    from mmswinv2.cpu import block, restore, torch_private

    def copy_with(patch):
        return lambda model: (copy.deepcopy(model), patch)
    return {
        'compiled attention kernel': copy_with(
            lambda: mock.patch.object(cpu_kernel, 'available', lambda: False)),
        'packed linear layers (oneDNN)': copy_with(
            lambda: mock.patch.object(torch_private, 'packed_linear_supported', lambda: False)),
        'pieces below the allocator\'s mmap threshold': copy_with(
            lambda: mock.patch.object(block, 'PIECE_BYTES', 2**62)),
        'mmswinv2.cpu as a whole': lambda model: (restore(copy.deepcopy(model)),
                                                  contextlib.nullcontext),
    }


def cpu_paths_suite(args):
    """Each CPU path on and off in one process (see the module docstring)."""
    import contextlib
    print(f'SwinV2-{args.arch} window {args.window}, {args.hw[0]}x{args.hw[1]}, batch '
          f'{args.batch}, inference, {args.dtype}; {args.iters} alternating pairs after '
          f'{args.warmup} warm-up steps each, in one process; torch {torch.__version__}; '
          f'{_device_name(args)}; attention kernel: {cpu_kernel.build_for()}\n')
    print('| path | on (ms) | off (ms) | gain: off / on [quartiles] |')
    print('|---|---|---|---|')
    torch.manual_seed(0)
    model = SwinTransformerV2(arch=args.arch, window_size=args.window, drop_path_rate=0.).eval()
    x = torch.randn(args.batch, 3, *args.hw)
    autocast = torch.autocast('cpu', dtype=DTYPES[args.dtype], enabled=args.dtype != 'fp32')

    def timed(m, switch=contextlib.nullcontext):
        with torch.inference_mode(), autocast, switch():
            start = time.perf_counter()
            m(x)
            return time.perf_counter() - start
    rows = []
    for name, make_off in _cpu_path_switches().items():
        if not _selected(args, name):
            continue
        off, switch = make_off(model)
        for _ in range(args.warmup):
            timed(model), timed(off, switch)
        pairs = [(timed(model), timed(off, switch)) for _ in range(args.iters)]
        ratios = [b / a for a, b in pairs]
        q1, median, q3 = statistics.quantiles(ratios, n=4, method='inclusive')
        on_ms = 1e3 * statistics.median(a for a, _ in pairs)
        off_ms = 1e3 * statistics.median(b for _, b in pairs)
        rows.append(dict(path=name, on_ms=on_ms, off_ms=off_ms, gain=median,
                         quartiles=[q1, q3]))
        print(f'| {name} | {on_ms:.1f} | {off_ms:.1f} | {median:.3f} [{q1:.3f}-{q3:.3f}] |',
              flush=True)
    return dict(rows=rows)


def _device_name(args):
    if args.device.startswith('cuda'):
        return torch.cuda.get_device_name()
    return f'{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--suite', default='backbones',
                        choices=['backbones', 'sequential', 'models', 'cpu-paths', 'deploy'])
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--arch', default='tiny', choices=['tiny', 'small', 'base'])
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--size', type=int, nargs='+', default=[256], metavar='H [W]')
    parser.add_argument('--window', type=int, default=None,
                        help='window (default 8; sequential: 16)')
    parser.add_argument('--mode', default='infer', choices=['infer', 'train'])
    parser.add_argument('--dtype', default='fp32', choices=list(DTYPES))
    parser.add_argument('--compile', action='store_true', help='add torch.compile rows')
    parser.add_argument('--models', nargs='+', metavar='WORD',
                        help='only the rows whose name contains one of these words '
                             '(e.g. mmswinv2 HF)')
    parser.add_argument('--rounds', type=int, default=1,
                        help='measure this many times, each time with fresh processes')
    parser.add_argument('--iters', type=int, default=10,
                        help='timed steps of each row (cpu-paths: pairs of steps)')
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--threads', type=int, default=None, help='CPU threads (torch)')
    parser.add_argument('--sizes', type=int, nargs='+', default=[1536, 2048],
                        help='sequential: input sizes')
    parser.add_argument('--chunk', type=int, default=64,
                        help='sequential: attn_chunk_windows of the chunked rows')
    parser.add_argument('--onnx-dir', default='work_dirs/benchmark_onnx',
                        help='deploy: where the exported files are kept')
    parser.add_argument('--json', help='also write the results here')
    parser.add_argument('--row', help=argparse.SUPPRESS)  # one row, in a child process
    parser.add_argument('--compiled', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--onnx', help=argparse.SUPPRESS)  # a deploy row's file
    args = parser.parse_args(argv)
    args.argv = _without(argv if argv is not None else sys.argv[1:], '--compile', '--models',
                         '--rounds')
    args.hw = (args.size[0], args.size[-1])
    if args.window is None:
        args.window = 16 if args.suite == 'sequential' else 8
    args.warmup = max(args.warmup, 1)
    return args


def _without(argv, *options):
    """``argv`` less the given options and their values (what a child row must not see)."""
    kept, skipping = [], False
    for arg in argv:
        if arg.startswith('--'):
            skipping = arg in options
        if not skipping:
            kept.append(arg)
    return kept


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.row:
        row(args)
        return
    suite = {'backbones': backbones_suite, 'sequential': sequential_suite,
             'models': models_suite, 'cpu-paths': cpu_paths_suite,
             'deploy': deploy_suite}[args.suite]
    results = suite(args)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(vars(args), **results), f, indent=2, default=str)


if __name__ == '__main__':
    main()
