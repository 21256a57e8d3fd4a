#!/usr/bin/env bash
# The tests marked `slow` that the default run (README, CI) leaves out: real-process interruptions of
# every command, zoo checks with every channel cut, whole training recipes, long fuzzing. 51 tests, 6 min
# on 2 cores. Extra pytest arguments pass through (e.g. `tools/slow_tests.sh tests/test_fuzz.py`).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
exec "$PY" -m pytest -q -p no:cacheprovider -m slow "$@"
