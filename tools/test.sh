#!/usr/bin/env bash
# The test command: set up .venv (idempotent), run the static checks (ruff lint, ruff format, mypy --strict
# on the package: seconds, and they fail first with a clear message), then the whole suite against the
# installed package, the slow cases included (a plain `pytest` skips them). Extra arguments go to pytest
# (e.g. -m "not slow" for the quick run). ST_SKIP_CHECKS=1 skips the static checks (a local rerun of a few tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh

check() {  # NAME HOW-TO-FIX COMMAND...: run a static check; on failure say which and how to fix it
  local name=$1 fix=$2
  shift 2
  if ! "$@"; then
    echo "test.sh: FAILED: $name (configured in pyproject.toml; $fix). The tests did not run." >&2
    exit 1
  fi
}
if [ "${ST_SKIP_CHECKS:-0}" != 1 ]; then
  check "ruff check" "fix, or .venv/bin/ruff check --fix ." .venv/bin/ruff check --quiet .
  check "ruff format --check" "run .venv/bin/ruff format ." .venv/bin/ruff format --check --quiet .
  check "mypy (strict, python/spectral_transcoder)" "fix the annotations" .venv/bin/mypy
  echo "test.sh: ruff check, ruff format --check and mypy passed"
fi
exec .venv/bin/python -m pytest -m "slow or not slow" "$@"
