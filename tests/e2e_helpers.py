"""Running the real tools in subprocesses, as users do."""
import os
import re
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))


def run_tool(args, timeout=900, launcher=None, script=None):
    """Run ``python tools/<args>`` (or torchrun with ``launcher=N`` processes, or a shell
    ``script`` such as tools/dist_train.sh); return stdout+err. Fails the test with the tail of
    the output when the command fails."""
    env = {**os.environ, 'PYTHONPATH': ROOT, 'OMP_NUM_THREADS': '1' if launcher or script else
           os.environ.get('OMP_NUM_THREADS', '2'), 'PORT': str(29500 + os.getpid() % 1000)}
    env['PATH'] = os.path.dirname(sys.executable) + os.pathsep + env.get('PATH', '')  # torchrun
    if script:
        cmd = ['bash', script, *args]
    elif launcher:
        cmd = [sys.executable, '-m', 'torch.distributed.run', f'--nproc_per_node={launcher}',
               '--master_port', str(29500 + os.getpid() % 1000), *args, '--launcher', 'pytorch']
    else:
        cmd = [sys.executable, *args]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=timeout)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f'{" ".join(cmd)} failed:\n{output[-4000:]}'
    return output


def logged_losses(output):
    """Every ``loss: <float>`` the MMEngine logger printed."""
    return [float(v) for v in re.findall(r'\bloss: ([-+0-9.eE]+|nan|inf)', output)]


def make_demo_data(out, n_train, n_val, seed):
    """The demo's shapes dataset (tools/make_demo_data.py) under ``out``: ``coco/`` and
    ``ade/`` layouts of the same scenes."""
    sys.path.insert(0, os.path.join(ROOT, 'tools'))
    from make_demo_data import make_dataset
    make_dataset(str(out), n_train=n_train, n_val=n_val, seed=seed, progress=False)
    return out
