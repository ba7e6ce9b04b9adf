"""Build the CPU attention kernel ahead of time (``make install`` runs this).

    python -m mmswinv2.cpu.build [--out DIR] [--force]

Compiles ``csrc/window_attention.cpp`` for this CPU's vector instructions and the ones below
them (about 20 s each, in parallel; a C++ compiler and ninja are needed) into ``--out``
(default ``$MMSWINV2_KERNEL_DIR``, else ``mmswinv2/cpu/lib``). Builds already there for this
source, flags and torch version are kept. Exits 1, saying why, if a build fails: inference
then runs the attention as PyTorch ops.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile

from . import kernel


def build(name: str, out_dir: str) -> str:
    """Compile one build into ``out_dir``; returns the library's path. (It also loads the
    library, which registers the op: one build per process.)"""
    from torch.utils.cpp_extension import load
    target = os.path.join(out_dir, kernel.library_name(name))
    # compiled beside the target, then moved into place whole
    work = tempfile.mkdtemp(prefix='.building-', dir=out_dir)
    try:
        load(kernel.library_name(name), [kernel.SOURCE], extra_cflags=kernel.compiler_flags(name),
             extra_ldflags=['-fopenmp'] if kernel.OPENMP else [], build_directory=work,
             is_python_module=False, verbose=False)
        if os.path.isdir(target):
            shutil.rmtree(target)
        os.replace(work, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return os.path.join(target, kernel.library_name(name) + '.so')


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', help='folder of the libraries (default: %(default)s)',
                        default=kernel.library_dir())
    parser.add_argument('--force', action='store_true', help='rebuild builds already there')
    parser.add_argument('--only', choices=list(kernel.BUILD_FLAGS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ[kernel.DIR_VARIABLE] = args.out
    os.makedirs(args.out, exist_ok=True)
    if args.only:  # one build, in its own process
        print(f'mmswinv2.cpu.build: {args.only}: built {build(args.only, args.out)}')
        return 0
    todo = [name for name in kernel.builds_this_cpu_runs()
            if args.force or not os.path.isfile(kernel.library_path(name))]
    for name in kernel.builds_this_cpu_runs():
        if name not in todo:
            print(f'mmswinv2.cpu.build: {name}: up to date ({kernel.library_path(name)})')
    builds = {name: subprocess.Popen([sys.executable, '-m', 'mmswinv2.cpu.build', '--only', name,
                                      '--out', args.out], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True) for name in todo}
    failed = 0
    for name, process in builds.items():
        output = process.communicate()[0].strip()
        if process.returncode == 0:
            print(output.splitlines()[-1])
        else:
            failed += 1
            print(f'{output}\nmmswinv2.cpu.build: {name}: failed. A C++ compiler and ninja (pip '
                  f'install ninja) are needed; without the kernel the attention runs as PyTorch '
                  f'ops.', file=sys.stderr)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
