"""Check that the installed packages satisfy a requirements file, without touching the network.

Usage: python tools/check_deps.py requirements.txt [--only NAME] [--verbose]

Exits 0 when every requirement is satisfied (and torch plus mmcv's compiled ops are importable),
1 otherwise, printing what is missing. ``tools/install_deps.sh`` uses it to skip pip entirely on a
machine that already has the stack, so re-running the install takes about a second.
"""
import argparse
import importlib.metadata
import importlib.util
import sys

try:
    from packaging.requirements import Requirement
except ImportError:  # a fresh machine: pip always vendors packaging
    from pip._vendor.packaging.requirements import Requirement


def read_requirements(path):
    with open(path) as f:
        lines = (line.split('#', 1)[0].strip() for line in f)
        return [Requirement(line) for line in lines if line]


def problems(requirements):
    found = []
    for req in requirements:
        try:
            version = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            found.append(f'{req.name}: not installed (need {req})')
            continue
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            found.append(f'{req.name}: {version} installed, need {req}')
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('requirements')
    parser.add_argument('--only', help='check only this package')
    parser.add_argument('--verbose', action='store_true')
    args = parser.parse_args()

    requirements = read_requirements(args.requirements)
    if args.only:
        requirements = [r for r in requirements if r.name == args.only]
    found = problems(requirements)
    if importlib.util.find_spec('torch') is None:
        found.append('torch: not installed')
    wants_mmcv = any(r.name == 'mmcv' for r in requirements)
    if wants_mmcv and importlib.util.find_spec('mmcv') is not None:
        if importlib.util.find_spec('mmcv._ext') is None:
            found.append('mmcv: installed without compiled ops (mmcv._ext missing)')
    for line in found:
        print(f'[check_deps] {line}')
    if args.verbose and not found:
        print(f'[check_deps] all {len(requirements)} requirements satisfied')
    return 1 if found else 0


if __name__ == '__main__':
    sys.exit(main())
