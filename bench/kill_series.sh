#!/usr/bin/env bash
# One export killed with SIGKILL at N seeded random request counts, each kill followed by a
# resume, then compared with an uninterrupted run (the test in tests/test_crash.py, which CI
# runs with N = 3). Usage: bench/kill_series.sh [N] [SEED]
set -euo pipefail
cd "$(dirname "$0")/.."
TM_EXPORT_KILLS="${1:-50}" TM_EXPORT_KILL_SEED="${2:-20261204}" \
  .venv/bin/python -m pytest -q -p no:cacheprovider -o timeout=900 tests/test_crash.py -k random_kills
