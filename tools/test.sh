#!/usr/bin/env bash
# The test command: set up .venv (idempotent) and run the whole suite against the
# installed package. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
exec .venv/bin/python -m pytest "$@"
