"""Shared by the tests and by the scripts that make reference fixtures (which run elsewhere)."""
import contextlib
import copy
import importlib.util
import logging
import os
import platform

import torch
import torch.nn as nn

from mmswinv2.testing import randomize_  # noqa: F401  (the tests import it from here)


#: Layout version of the reference fixtures (``fixtures/*.pt``). 2: every reference output is the
#: reference implementation's float64 result, and ``meta`` records the reference's own fp32
#: error. The tests refuse fixtures of any other version.
FIXTURE_FORMAT = 2


def float64_reference(model: nn.Module, x: torch.Tensor, outputs_of):
    """Run a reference implementation on ``x`` in float64 and in float32.

    ``outputs_of(model, x)`` returns the list of tensors to record. Returns the float64 outputs
    (what a fixture stores: rounding error ~1e-15, the same on every CPU) and, per output, the
    max |fp32 - fp64| of the reference itself on this machine (what the tests' fp32 bound is
    derived from). ``model`` is left untouched.
    """
    model64 = copy.deepcopy(model).double()
    with torch.no_grad():
        outputs = [t.detach().clone() for t in outputs_of(model64, x.double())]
        outputs32 = outputs_of(copy.deepcopy(model).float(), x.float())
    errors = [max_abs_diff(a.double(), b) for a, b in zip(outputs32, outputs)]
    return outputs, errors


def machine() -> dict:
    """Where a fixture or measurement was made: CPU, the kernels torch chose, torch version."""
    return dict(cpu=_cpu_name(), cpu_capability=torch.backends.cpu.get_cpu_capability(),
                torch=str(torch.__version__))


def _cpu_name() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, f'shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}'
    return (a - b).abs().max().item()


def capture_outputs(modules, run, extract=lambda output: output, grad=False):
    """Call ``run()`` (without gradients unless ``grad``); return ``extract(output)`` of every
    call of each of ``modules`` (in call order) and what ``run`` returned."""
    captured = []
    hooks = [m.register_forward_hook(lambda module, inputs, output:
                                     captured.append(extract(output))) for m in modules]
    try:
        with torch.set_grad_enabled(grad):
            result = run()
    finally:
        for h in hooks:
            h.remove()
    return captured, result


def loss_and_grads(model: nn.Module, x: torch.Tensor, forward=None):
    """Backpropagate the sum over outputs of ``mean(output ** 2)`` of ``forward(x)`` (default
    ``model(x)``); return the loss and the gradient of each parameter of ``model`` that got
    one."""
    model.zero_grad()
    loss = sum(o.square().mean() for o in (model if forward is None else forward)(x))
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                           if p.grad is not None}


def raw_stage_outputs(model: nn.Module, x: torch.Tensor, grad: bool = False):
    """Run an mmswinv2 backbone; return its stage outputs before the output norms (NCHW) and its
    normal (normalised) outputs."""
    return capture_outputs(model.stages, lambda: model(x), lambda o: o.permute(0, 3, 1, 2),
                           grad)


def load_tool(path: str):
    """A script under ``tools/`` (e.g. ``'analysis/get_flops.py'``) imported as a module, as the
    tests call the tools' ``main`` in-process."""
    full = os.path.join(os.path.dirname(__file__), '..', 'tools', path)
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, full)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def logged():
    """The messages MMEngine's current logger (``print_log(..., logger='current')``) gets
    inside the block."""
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
