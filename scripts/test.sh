#!/usr/bin/env bash
# The test command of the README: set up .venv, lint, run the whole test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not e2e"`.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
source scripts/setup_venv.sh
echo "==> ruff"
ruff check nnunet_pde trainers tests scripts
# One pytest process by default: measured on the 2-core machine, two workers
# (NNUNET_PDE_TEST_WORKERS=2, pytest-xdist with --dist loadfile, which keeps each file and its
# module-scoped fixtures on one worker) took 3588 s against 3326 s for one process, because
# the nnU-Net trainings of the end-to-end tests already use both cores.
workers="${NNUNET_PDE_TEST_WORKERS:-0}"
echo "==> pytest ($workers workers)"
python -m pytest -n "$workers" --dist loadfile "$@"
