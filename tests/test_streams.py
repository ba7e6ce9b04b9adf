"""CPU inference of a batch in parallel streams (mmswinv2.models.streams)."""
import threading

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mmswinv2 import SwinTransformerV2

from helpers import randomize_

SMALL = dict(embed_dims=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8))


@pytest.fixture
def two_threads():
    """Two intra-op threads (streams need at least two), the caller's count restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def small_model(**kwargs):
    return randomize_(SwinTransformerV2(arch=SMALL, window_size=7, drop_path_rate=0., **kwargs),
                      seed=0).eval()


def record_forwards(model):
    """Record (thread name, images, intra-op threads) of each forward of a part of the batch."""
    calls = []
    forward = model._forward

    def recorded(x):
        calls.append((threading.current_thread().name, x.shape[0], torch.get_num_threads()))
        return forward(x)
    model._forward = recorded
    return calls


def relative_errors(outputs, references):
    return [((a.double() - b.double()).abs().max() / b.double().abs().max()).item()
            for a, b in zip(outputs, references, strict=True)]


@pytest.mark.parametrize('autocast', [None, torch.bfloat16])
def test_a_batch_in_streams_gives_the_outputs_of_one_forward(autocast, two_threads):
    """Three images as two streams (one and two images, one intra-op thread each, in the pool's
    threads) against one forward of all three: the same outputs (in fp32 up to the rounding of
    products over other numbers of rows; under bf16 autocast in bf16 too, so the autocast
    reached the streams). The caller's thread count is unchanged afterwards."""
    model = small_model()
    x = torch.randn(3, 3, 150, 190, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), torch.autocast('cpu', dtype=autocast or torch.bfloat16,
                                         enabled=autocast is not None):
        model.cpu_streams = 1
        whole = model(x)
        model.cpu_streams = 2
        calls = record_forwards(model)
        streamed = model(x)
    assert sorted(images for _, images, _ in calls) == [1, 2]
    assert all(name.startswith('mmswinv2-stream') and threads == 1 for name, _, threads in calls)
    assert torch.get_num_threads() == 2
    assert [t.dtype for t in streamed] == [t.dtype for t in whole]
    assert [t.shape for t in streamed] == [t.shape for t in whole]
    bound = 1e-5 if autocast is None else 0.05
    assert max(relative_errors(streamed, whole)) <= bound


def test_streams_run_in_the_callers_inference_mode(two_threads):
    model = small_model()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    calls = record_forwards(model)
    with torch.inference_mode():
        outputs = model(x)
    assert len(calls) == 2
    assert all(t.is_inference() for t in outputs)


class NoOpDispatchMode(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize('case', ['one image', 'one stream', 'one thread', 'train', 'grad',
                                  'hook', 'global hook', 'profiler', 'dispatch mode'])
def test_streams_stay_off_where_they_could_be_seen(case, two_threads):
    """One forward of the whole batch, in the caller's thread: where streams cannot help (one
    image, cpu_streams=1, one intra-op thread) and where something would see them: train mode
    (the order in which the streams draw random numbers would vary), autograd recording,
    forward hooks on submodules, the profiler, a dispatch mode (thread-local, or they would
    see parts of the batch)."""
    model = small_model(cpu_streams=1 if case == 'one stream' else 2)
    x = torch.randn(1 if case == 'one image' else 2, 3, 64, 64)
    calls = record_forwards(model)
    if case == 'one thread':
        torch.set_num_threads(1)
    if case == 'train':
        model.train()
    if case == 'hook':
        model.stages[1].blocks[0].mlp.register_forward_hook(lambda *args: None)
    grad = torch.enable_grad() if case == 'grad' else torch.no_grad()
    with grad:
        if case == 'global hook':
            with torch.nn.modules.module.register_module_forward_hook(lambda *args: None):
                model(x)
        elif case == 'profiler':
            with torch.profiler.profile():
                model(x)
        elif case == 'dispatch mode':
            with NoOpDispatchMode():
                model(x)
        else:
            model(x)
    assert calls == [(threading.current_thread().name, x.shape[0], torch.get_num_threads())]


def test_an_error_in_a_stream_is_raised_in_the_caller(two_threads):
    model = small_model()
    forward = model._forward

    def fails_on_one_image(x):
        if x.shape[0] == 1:
            raise RuntimeError('stream failed')
        return forward(x)
    model._forward = fails_on_one_image
    with torch.no_grad(), pytest.raises(RuntimeError, match='stream failed'):
        model(torch.randn(3, 3, 64, 64))
    assert torch.get_num_threads() == 2
