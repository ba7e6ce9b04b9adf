#!/usr/bin/env bash
# Install the tested stack (requirements.txt) into the current Python environment, then build
# the CPU attention kernel for this torch and CPU (python -m mmswinv2.cpu.build).
# Safe to re-run: when everything is already there it returns in a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"

build_kernel() {
    # Without the kernel CPU inference runs the attention as PyTorch ops: warn, do not fail.
    "$PY" -m mmswinv2.cpu.build || echo "warning: the CPU attention kernel was not built (see above)" >&2
}

if "$PY" tools/check_deps.py requirements.txt; then
    build_kernel
    exit 0
fi

# torch: keep the one that is installed; otherwise the CPU build this stack is tested with.
if ! "$PY" -c 'import torch' 2>/dev/null; then
    "$PY" -m pip install torch==2.13.0
fi
"$PY" -m pip install 'setuptools>=77,<81' wheel
# mmcv's setup.py imports torch, so it must build against the installed torch (no isolation).
if ! "$PY" tools/check_deps.py requirements.txt --only mmcv; then
    echo "Building mmcv 2.1.0 with ops (about 21 minutes on 2 cores the first time; cached afterwards)"
    MMCV_WITH_OPS=1 "$PY" -m pip install --no-build-isolation mmcv==2.1.0
fi
"$PY" -m pip install -r requirements.txt
# Other installs may have moved setuptools; pin it last.
"$PY" -m pip install 'setuptools>=77,<81'
"$PY" tools/check_deps.py requirements.txt --verbose
build_kernel
