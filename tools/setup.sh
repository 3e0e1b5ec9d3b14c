#!/usr/bin/env bash
# Set up (or refresh) the project's virtual environment in .venv:
# builds the C++ extension and installs the package with its test, training, archives, dask and plot extras.
# Idempotent: re-running rebuilds incrementally (build/ is kept by scikit-build-core).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
# torch is pinned to the CPU wheel: a bare "torch" would pull GBs of CUDA packages.
# Only training/ (and its tests) import it; the inference package never does.
.venv/bin/python -m pip show torch >/dev/null 2>&1 || .venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -Cbuild-dir=build/{wheel_tag} ".[test,training,archives,dask,plot]"
