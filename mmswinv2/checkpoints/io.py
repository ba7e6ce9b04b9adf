"""Safe reading of checkpoint files: tensors only, never arbitrary code.

Reads ``.pth`` / ``.bin`` / ``.pt`` with ``torch.load(weights_only=True)``, ``.safetensors`` with
safetensors, and HF model folders (``config.json`` + ``model.safetensors`` or
``pytorch_model.bin``). Checkpoints written by MMEngine training also pickle its
``HistoryBuffer`` logs and numpy scalars/arrays; those load through :data:`MMENGINE_SAFE_GLOBALS`,
an explicit allow-list passed to torch's weights-only unpickler. Nothing else is allowed.
"""
import json
import os
import pickle
import pickletools
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import numpy as np
import torch

#: Where trainers nest the weights inside a checkpoint dict, in the order they are looked for.
STATE_DICT_KEYS = ('state_dict', 'model', 'module', 'model_state')
HF_WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin')


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or understood; the message names the file."""


@dataclass
class Checkpoint:
    path: str
    state_dict: Dict[str, torch.Tensor]
    #: HF ``config.json`` next to the weights, if any.
    hf_config: Optional[dict] = None
    #: Everything in the file besides the weights (``meta``, ``optimizer``, ...).
    extra: Dict[str, Any] = field(default_factory=dict)


def _history_buffer_getattr(obj, name):
    """Stand-in for ``builtins.getattr`` while unpickling: HistoryBuffer pickles its statistics
    methods as ``getattr(HistoryBuffer, 'mean')``; resolve exactly those and nothing else."""
    from mmengine.logging import HistoryBuffer
    allowed = {'min', 'max', 'current', 'mean'} | set(HistoryBuffer._statistics_methods)
    if obj is HistoryBuffer and name in allowed:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(f'getattr({obj!r}, {name!r}) is outside the allow-list')


def mmengine_safe_globals():
    """The allow-list for MMEngine training checkpoints (message hub logs, numpy scalars)."""
    from mmengine.logging import HistoryBuffer
    numpy_core = getattr(np, '_core', None) or np.core
    dtype_classes = {type(np.dtype(code)) for code in np.typecodes['All']}
    return [HistoryBuffer, numpy_core.multiarray._reconstruct, numpy_core.multiarray.scalar,
            np.ndarray, np.dtype, *sorted(dtype_classes, key=str),
            (_history_buffer_getattr, 'builtins.getattr')]


_allowed_depth = 0


@contextmanager
def mmengine_checkpoints_allowed():
    """Let ``torch.load(weights_only=True)`` read MMEngine training checkpoints (and only the
    classes they need). Used around MMEngine's own loading in tools/train.py and tools/test.py.

    Re-entrant: torch's ``safe_globals`` is not (leaving an inner one resets the allow-list to
    torch's defaults, measured with torch 2.13), so only the outermost use enters it.
    """
    global _allowed_depth
    _allowed_depth += 1
    try:
        if _allowed_depth == 1:
            with torch.serialization.safe_globals(mmengine_safe_globals()):
                yield
        else:
            yield
    finally:
        _allowed_depth -= 1


def read_checkpoint(path: str) -> Checkpoint:
    """Read weights (and an HF ``config.json``) from a file or an HF model folder."""
    path = os.fspath(path)
    hf_config = None
    if os.path.isdir(path):
        hf_config, path = _hf_folder(path)
    elif not os.path.exists(path):
        raise CheckpointError(f'{path}: no such file or directory')
    if os.path.getsize(path) == 0:
        raise CheckpointError(f'{path}: the file is empty (0 bytes)')
    obj = _load_safetensors(path) if path.endswith('.safetensors') else _load_torch(path)
    state_dict, extra = _find_state_dict(path, obj)
    if hf_config is None:
        sibling = os.path.join(os.path.dirname(path), 'config.json')
        if os.path.basename(path) in HF_WEIGHT_FILES and os.path.isfile(sibling):
            hf_config = _read_json(sibling)
    return Checkpoint(path=path, state_dict=state_dict, hf_config=hf_config, extra=extra)


def _hf_folder(folder):
    for name in HF_WEIGHT_FILES:
        weights = os.path.join(folder, name)
        if os.path.isfile(weights):
            config = os.path.join(folder, 'config.json')
            return (_read_json(config) if os.path.isfile(config) else None), weights
    raise CheckpointError(f'{folder}: a folder, but without {" or ".join(HF_WEIGHT_FILES)} '
                          f'(found: {sorted(os.listdir(folder))[:10]})')


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f'{path}: not valid JSON ({err})') from None


def _load_safetensors(path):
    from safetensors.torch import load_file
    try:
        return load_file(path, device='cpu')
    except Exception as err:  # noqa: BLE001 - SafetensorError, OSError, or any parse failure
        raise CheckpointError(f'{path}: not a readable safetensors file (truncated or '
                              f'corrupted?): {err}') from None


def _load_torch(path):
    try:
        with mmengine_checkpoints_allowed():
            return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError:
        unsafe = _unsafe_globals(path)
        detail = f' It references {", ".join(unsafe)}.' if unsafe else ''
        raise CheckpointError(
            f'{path}: refused to load: it contains pickled Python objects outside the allow-list '
            f'of tensors, containers and MMEngine logs, which could run code when loaded.{detail} '
            f'If you trust the file, re-save just its weights (torch.save(state_dict)) in a '
            f'trusted environment.') from None
    except Exception as err:  # noqa: BLE001 - a damaged file can fail anywhere in the parser
        # (zip, pickle opcodes, storages: RuntimeError, EOFError, BadZipFile, KeyError, ...)
        first_line = (str(err).splitlines() or [type(err).__name__])[0]
        raise CheckpointError(f'{path}: not a readable PyTorch checkpoint (truncated or '
                              f'corrupted?): {first_line}') from None


def _unsafe_globals(path):
    """Names of the Python globals a refused checkpoint references, for the error message."""
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # torch's scanner reads pickle protocol <= 4 only: scan the opcodes
        pass
    try:
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n.endswith('data.pkl'))
            data = archive.read(name)
        names, strings = [], []
        for op, arg, _ in pickletools.genops(data):
            if op.name == 'GLOBAL':
                names.append(arg.replace(' ', '.'))
            elif op.name == 'STACK_GLOBAL' and len(strings) >= 2:
                names.append('.'.join(strings[-2:]))
            if isinstance(arg, str):
                strings.append(arg)
        return sorted(set(n for n in names if not n.startswith(('torch.', 'collections.'))))
    except Exception:  # not a zip checkpoint, or unreadable: the generic message must do
        return []


def _is_state_dict(obj):
    return isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values())


def _find_state_dict(path, obj):
    if _is_state_dict(obj):
        return dict(obj), {}
    if isinstance(obj, dict):
        for key in STATE_DICT_KEYS:
            if _is_state_dict(obj.get(key)):
                return dict(obj[key]), {k: v for k, v in obj.items() if k != key}
        found = sorted(map(str, obj))[:12]
        raise CheckpointError(f'{path}: no weights found: top-level keys are {found}; expected '
                              f'a state dict, or one under {list(STATE_DICT_KEYS)}')
    raise CheckpointError(f'{path}: holds a {type(obj).__name__}, not a dict of weights')
