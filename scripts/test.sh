#!/usr/bin/env bash
# The test command of the README: set up .venv, lint, run the whole test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not e2e"`.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
source scripts/setup_venv.sh
echo "==> ruff"
ruff check nnunet_pde trainers tests scripts
# Two pytest workers where the machine has two cores or more (override with
# NNUNET_PDE_TEST_WORKERS=N; 0 runs everything in one process). --dist loadfile keeps each
# test file, and so its module-scoped fixtures (the e2e trainings), on one worker.
cores="$(python -c 'import os; print(len(os.sched_getaffinity(0)))')"
workers="${NNUNET_PDE_TEST_WORKERS:-$(( cores < 2 ? 0 : 2 ))}"
echo "==> pytest ($workers workers)"
python -m pytest -n "$workers" --dist loadfile "$@"
