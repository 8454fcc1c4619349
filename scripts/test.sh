#!/usr/bin/env bash
# The test command of the README: set up .venv, lint, run the whole test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not e2e"`.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
source scripts/setup_venv.sh
echo "==> ruff"
ruff check nnunet_pde trainers tests scripts
echo "==> pytest"
python -m pytest "$@"
