#!/usr/bin/env bash
# The test command: set up .venv (idempotent) and run the whole suite against the
# installed package, the slow cases included (a plain `pytest` skips them). Extra arguments
# go to pytest (e.g. -m "not slow" for the quick run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
exec .venv/bin/python -m pytest -m "slow or not slow" "$@"
