#!/usr/bin/env bash
# Set up (or refresh) the project's virtual environment in .venv:
# builds the C++ extension and installs the package with its test, training, archives, dask and plot extras
# (test brings the checkers tools/test.sh runs, ruff and mypy, and what tools/sanitize.sh builds with: cmake,
# ninja, pybind11, pythran).
# Idempotent and quick to rerun: the install is skipped when the sources it is built from (pyproject.toml,
# CMakeLists.txt, cpp/, python/, training/) have not changed since the last successful install (stamp in .venv).
#   bash tools/setup.sh           # install if needed
#   bash tools/setup.sh --check   # only say whether .venv is up to date (exit 0) or not (exit 1)
#   bash tools/setup.sh --hash    # print the hash of those sources (what the stamp holds)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
STAMP=.venv/.spectral-transcoder-install

sources_hash() {  # the content of every file the installed package is built from
  find pyproject.toml CMakeLists.txt cpp python training -type f \
       ! -path '*/__pycache__/*' ! -name '*.pyc' ! -name '_core*.so' -print0 \
    | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1
}

up_to_date() {
  [ -x .venv/bin/python ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(sources_hash)" ] \
    && .venv/bin/python -c "import spectral_transcoder, torch" >/dev/null 2>&1
}

if [ "${1:-}" = "--hash" ]; then sources_hash; exit 0; fi
if [ "${1:-}" = "--check" ]; then
  if up_to_date; then echo "setup: .venv is up to date"; exit 0; fi
  echo "setup: .venv needs an install"; exit 1
fi
if up_to_date; then
  echo "setup: .venv is up to date (sources unchanged since the last install); nothing to do"
  exit 0
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
# torch is pinned to the CPU wheel: a bare "torch" would pull GBs of CUDA packages.
# Only training/ (and its tests) import it; the inference package never does.
.venv/bin/python -m pip show torch >/dev/null 2>&1 || .venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -Cbuild-dir=build/{wheel_tag} ".[test,training,archives,dask,plot]"
sources_hash > "$STAMP"
