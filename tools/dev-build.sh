#!/usr/bin/env bash
# Developer build: compile _core into build/dev and drop it next to the sources,
# so `PYTHONPATH=python pytest` runs against the working tree.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
BUILD=${ST_BUILD_DIR:-build/dev}
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=${ST_BUILD_TYPE:-Release} \
  -DPython_EXECUTABLE="$(command -v "$PY")" \
  -Dpybind11_DIR="$("$PY" -m pybind11 --cmakedir)" "$@" >/dev/null
cmake --build "$BUILD" -j2
# Atomic replace: other processes may have the old module mapped.
for so in "$BUILD"/_core*.so; do
  tmp="python/spectral_transcoder/.$(basename "$so").$$"
  cp "$so" "$tmp" && mv -f "$tmp" "python/spectral_transcoder/$(basename "$so")"
done
