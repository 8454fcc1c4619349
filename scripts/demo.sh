#!/usr/bin/env bash
# The demo command of the README: set up .venv, make a small synthetic BraTS-like dataset,
# plan + preprocess it with nnU-Net, train a short PDE3D-UNet on fold 0 on the CPU, predict
# the test images with nnUNetv2_predict and print the Dice per region.
# Extra arguments go to scripts/demo.py (see `bash scripts/demo.sh --help`).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
source scripts/setup_venv.sh
python scripts/demo.py "$@"
