#!/usr/bin/env bash
# Build _core with AddressSanitizer + UBSan (-DST_SANITIZE=ON) and run the kernel
# tests against that build. Any sanitizer report fails the run.
#
#   tools/sanitize.sh [pytest args]    default: the three kernel test files
#
# The instrumented module goes into its own build dir and a temporary copy of the
# package: python/spectral_transcoder/_core*.so (the dev build other people use)
# is never touched. Concurrent runs sharing a build dir are serialised by a lock.
#
# Environment:
#   PYTHON                 interpreter with numpy, pytest, hypothesis and the build
#                          requirements pybind11 and pythran (default python3)
#   ST_SANITIZE_BUILD_DIR  build dir (default build/asan); deliberately not
#                          ST_BUILD_DIR, which would point at a dev build
#   ST_SANITIZE_CXX        g++ (default): the module must be built by the gcc whose
#                          libasan.so is preloaded
#   HYPOTHESIS_PROFILE     passed through (tests/conftest.py default "st": the
#                          instrumented kernels run the full property tests in ~10 s)
#
# Last line: "sanitize: PASSED ..." (exit 0) or "sanitize: FAILED ..." (exit 1).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
BUILD=${ST_SANITIZE_BUILD_DIR:-build/asan}
CXX_BIN=${ST_SANITIZE_CXX:-g++}
if [ $# -gt 0 ]; then
  tests=("$@")
else
  tests=(tests/test_third_octave.py tests/test_pinv.py tests/test_mel.py)
fi

fail() {
  echo "sanitize: FAILED: $*"
  exit 1
}

cxx=$(command -v "$CXX_BIN") || fail "$CXX_BIN not found"
command -v cmake >/dev/null || fail "cmake not found"
# The sanitizer runtimes must be loaded before anything else: python itself is
# not instrumented, so libasan is preloaded into it.
asan_rt=$("$cxx" -print-file-name=libasan.so)
[ -f "$asan_rt" ] || fail "$CXX_BIN has no libasan.so (install gcc's libasan)"
# libstdc++ too: python does not link it, and ASan resolves its __cxa_throw
# interceptor at start-up; without it the first C++ exception (a require() in a
# bad-input test) dies with "CHECK failed ... real___cxa_throw".
stdcxx_rt=$("$cxx" -print-file-name=libstdc++.so.6)
[ -f "$stdcxx_rt" ] || fail "$CXX_BIN has no libstdc++.so.6"
pybind11_dir=$("$PY" -m pybind11 --cmakedir 2>/dev/null) || fail "pybind11 is not installed in $PY"

mkdir -p "$BUILD"
if command -v flock >/dev/null; then
  exec 9>"$BUILD/.sanitize.lock"
  flock 9
fi
# RelWithDebInfo: -g for file:line in reports, and pybind11 strips Release
# modules of their symbols; ST_SANITIZE's -O1 comes last and wins over -O2.
generator=()
if [ ! -f "$BUILD/CMakeCache.txt" ] && command -v ninja >/dev/null; then
  generator=(-G Ninja)
fi
echo "sanitize: building $BUILD with $cxx (-DST_SANITIZE=ON)"
cmake -S . -B "$BUILD" "${generator[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER="$cxx" \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-g1 -DNDEBUG" -DST_SANITIZE=ON -DPython_EXECUTABLE="$(command -v "$PY")" -Dpybind11_DIR="$pybind11_dir" >/dev/null \
  || fail "cmake configure"
cmake --build "$BUILD" -j "${ST_SANITIZE_JOBS:-2}" >/dev/null || fail "build (rerun: cmake --build $BUILD)"
sos=("$BUILD"/_core*.so)
[ -f "${sos[0]}" ] || fail "no _core*.so in $BUILD"
# A stale cache configured without ST_SANITIZE would silently test nothing.
ldd "${sos[0]}" | grep -q libasan || fail "${sos[0]} is not linked against libasan"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/st-sanitize.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
cp -R python/spectral_transcoder "$tmp/"
# Drop the dev build (and dev-build.sh's half-copied temp files) and caches.
find "$tmp/spectral_transcoder" -mindepth 1 \( -name '_core*.so' -o -name '.*' -o -name __pycache__ \) \
  -prune -exec rm -rf {} +
cp "${sos[@]}" "$tmp/spectral_transcoder/"
logs="$tmp/sanitizer-logs"
mkdir "$logs"

# Reports go to files ($logs/asan.PID, ubsan.PID) as well as failing the process:
# pytest's fd capture would otherwise swallow a report printed just before abort.
# detect_leaks=0: CPython keeps interned objects alive at exit by design.
run_env=(
  env
  LD_PRELOAD="$asan_rt:$stdcxx_rt${LD_PRELOAD:+:$LD_PRELOAD}"
  ASAN_OPTIONS="halt_on_error=1:detect_leaks=0:log_path=$logs/asan"
  UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$logs/ubsan"
  PYTHONPATH="$tmp${PYTHONPATH:+:$PYTHONPATH}"
  PYTHONDONTWRITEBYTECODE=1
)
where=$("${run_env[@]}" "$PY" -c "import spectral_transcoder._core as c; print(c.__file__)") \
  || fail "cannot import the instrumented module"
case "$where" in
  "$tmp"/*) echo "sanitize: testing $where" ;;
  *) fail "imported $where, not the instrumented copy in $tmp" ;;
esac

set +e
"${run_env[@]}" "$PY" -m pytest -q -p no:cacheprovider "${tests[@]}" 2>&1 | tee "$tmp/pytest.log"
rc=${PIPESTATUS[0]}
set -e

reports=("$logs"/*)
if [ -e "${reports[0]}" ]; then
  for r in "${reports[@]}"; do
    echo "===== sanitizer report $(basename "$r") ====="
    cat "$r"
  done
  fail "sanitizer report(s) above (pytest exit code $rc)"
fi
# Belt and braces: a report that escaped log_path (e.g. printed before it applied).
if grep -qE 'ERROR: AddressSanitizer|runtime error:|SUMMARY: (Address|UndefinedBehavior)Sanitizer' "$tmp/pytest.log"; then
  fail "sanitizer report in the pytest output above"
fi
[ "$rc" -eq 0 ] || fail "pytest exit code $rc"
echo "sanitize: PASSED ($(tail -n 1 "$tmp/pytest.log" | tr -d '=' | sed 's/^ *//;s/ *$//'); no sanitizer report)"
