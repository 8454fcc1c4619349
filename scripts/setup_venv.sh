#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install nnunet-pde into it
# (editable, with the test extra). Sourced by scripts/demo.sh and scripts/test.sh; needs only
# a Python >= 3.10 on PATH (set PYTHON=/path/to/python to choose one).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${NNUNET_PDE_VENV:-$repo/.venv}"
py="${PYTHON:-python3}"

if ! "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null; then
    echo "error: $py is missing or older than Python 3.10; set PYTHON=/path/to/python3.10+" >&2
    exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
    echo "==> creating virtual environment $venv"
    "$py" -m venv "$venv"
fi
# Reinstall only when pyproject.toml changed since the last successful install.
stamp="$venv/.nnunet_pde_installed"
want="$(cat "$repo/pyproject.toml" | "$venv/bin/python" -c 'import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "==> installing nnunet-pde and its dependencies (nnunetv2, torch: first time takes a few minutes)"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet --progress-bar off -e "$repo[test]"
    echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
export VIRTUAL_ENV="$venv"
