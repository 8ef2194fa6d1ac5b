#!/usr/bin/env bash
# Sets up ./.venv: torch (kept if one is already importable), then this package in editable mode
# with its C++ extension built against that torch (no build isolation: see README, "Building").
set -euo pipefail
cd "$(dirname "$0")/.."

# --system-site-packages: a machine that already has torch (a GPU box, say) keeps its own build.
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv --system-site-packages .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    "${pip[@]}" "torch==2.13.0"  # the CPU wheel; plain "torch" would pull a multi-GB CUDA build
fi
"${pip[@]}" setuptools wheel ninja
"${pip[@]}" --no-build-isolation -e ".[test,bench,numba,triton,examples]"
