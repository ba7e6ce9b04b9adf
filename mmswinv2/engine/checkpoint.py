"""Checkpoints that are whole or absent, and the one ``--resume`` continues from.

MMEngine writes a checkpoint in place (``open(path, 'wb').write``): a run killed during the
write (preemption, the OOM killer, Ctrl-C) leaves a truncated file under the checkpoint's own
name, and a later save of the same name overwrites a whole file in place. Here a checkpoint
goes to a temporary file in the same folder, is flushed to disk, then renamed over its name:
a rename within one file system is atomic, so readers see the old file or the new one.
``last_checkpoint`` (a few bytes, still written in place by MMEngine) is checked at resume
instead: its target is used only if whole, else the newest whole checkpoint of the folder.
"""
import glob
import os
import os.path as osp
import re
import zipfile
from typing import Optional, Union

from mmengine.fileio.backends import LocalBackend, register_backend
from mmengine.hooks import CheckpointHook
from mmengine.logging import print_log

from ..registry import HOOKS

#: The file backend of :class:`AtomicCheckpointHook` (MMEngine's ``backend_args``).
ATOMIC_BACKEND = 'mmswinv2_atomic_local'
#: Checkpoints ``CheckpointHook`` writes by default (``epoch_N.pth``, ``iter_N.pth``).
_STEP_NAME = re.compile(r'^(epoch|iter)_(\d+)\.pth$')


def atomic_write(data: Union[bytes, str], path: str) -> None:
    """Write ``data`` to ``path`` through a temporary file, fsync and rename."""
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temporary = osp.join(folder, f'.{osp.basename(path)}.{os.getpid()}.partial')
    try:
        with open(temporary, 'wb') as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        if osp.exists(temporary):
            os.remove(temporary)
        raise
    directory = os.open(folder, os.O_RDONLY)
    try:  # the rename itself reaches the disk
        os.fsync(directory)
    finally:
        os.close(directory)


class AtomicLocalBackend(LocalBackend):
    """MMEngine's local file backend whose writes are :func:`atomic_write`."""

    def put(self, obj: bytes, filepath) -> None:
        atomic_write(obj, os.fspath(filepath))

    def put_text(self, obj: str, filepath, encoding: str = 'utf-8') -> None:
        atomic_write(obj.encode(encoding), os.fspath(filepath))


register_backend(ATOMIC_BACKEND, AtomicLocalBackend, force=True)


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """MMEngine's ``CheckpointHook`` (same arguments) writing each checkpoint atomically
    (:func:`atomic_write`) on the local disk. Given other ``backend_args`` (e.g. a remote
    store), it is MMEngine's hook unchanged."""

    def __init__(self, *args, backend_args: Optional[dict] = None, **kwargs):
        super().__init__(*args, backend_args=backend_args or dict(backend=ATOMIC_BACKEND),
                         **kwargs)


def checkpoint_problem(path: str) -> Optional[str]:
    """Why ``path`` is not a whole checkpoint (missing, empty, truncated, not torch's zip
    format), or None when it is. Reads the zip's directory (at the end of the file), not the
    weights."""
    if not osp.isfile(path):
        return 'does not exist'
    if osp.getsize(path) == 0:
        return 'is empty'
    try:
        with zipfile.ZipFile(path) as archive:
            if not any(name.endswith('/data.pkl') or name == 'data.pkl'
                       for name in archive.namelist()):
                return 'is a zip file without a torch checkpoint in it'
    except (zipfile.BadZipFile, OSError) as error:
        return f'is truncated or not a torch checkpoint ({error})'
    return None


def find_resume_checkpoint(work_dir: str) -> Optional[str]:
    """The checkpoint ``--resume`` continues from: the one ``work_dir/last_checkpoint`` names
    if it is whole, else (with a warning naming both) the whole ``epoch_N`` / ``iter_N``
    checkpoint of ``work_dir`` with the largest N; None when there is none."""
    pointer = osp.join(work_dir, 'last_checkpoint')
    named = None
    if osp.isfile(pointer):
        with open(pointer) as f:
            named = f.read().strip() or None
    if named is not None:
        problem = checkpoint_problem(named)
        if problem is None:
            return named
        reason = f'{pointer} names {named}, which {problem}'
    else:
        reason = (f'{pointer} is empty' if osp.isfile(pointer)
                  else f'{work_dir} has no last_checkpoint')
    stepped = []
    for path in glob.glob(osp.join(work_dir, '*.pth')):
        match = _STEP_NAME.match(osp.basename(path))
        if match and osp.abspath(path) != osp.abspath(named or ''):
            stepped.append((int(match.group(2)), path))
    for _, path in sorted(stepped, reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            print_log(f'--resume: {reason}; resuming from {path}, the newest whole '
                      f'checkpoint in {work_dir}', logger='current', level=30)
            return path
        print_log(f'--resume: {path} {problem}; skipped', logger='current', level=30)
    if named is not None or stepped:
        raise FileNotFoundError(f'--resume: {reason}, and {work_dir} holds no other whole '
                                f'checkpoint; start without --resume, or give one with '
                                f'--resume CKPT')
    print_log(f'--resume: {reason}; training starts from the beginning', logger='current',
              level=30)
    return None
