"""Helpers for the real plans files produced by nnU-Net's planner (tests/fixtures/plans).

A module of its own (not conftest.py) so that test files can import it by a unique name."""

from __future__ import annotations

import copy
import json
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures" / "plans"
REPO = Path(__file__).resolve().parent.parent

#: (plans file, dataset.json file) of every shared fixture: default and ResEnc M plans for a
#: tiny 1-channel labels dataset (4 stages) and a BraTS-sized 4-channel regions dataset (6 stages).
PLANS_CASES = {
    "tiny_plain": ("plans_tiny_plain.json", "dataset_tiny_labels.json"),
    "tiny_resencm": ("plans_tiny_resencm.json", "dataset_tiny_labels.json"),
    "brats_plain": ("plans_brats_plain.json", "dataset_brats_regions.json"),
    "brats_resencm": ("plans_brats_resencm.json", "dataset_brats_regions.json"),
}

#: Fixtures used by name only (not in the PLANS_CASES parametrisation): nnU-Net's planner on
#: a thick-slice LiTS-like CT dataset (nnunet-pde make-dataset lits-like --size 24,96,96):
#: spacing (4, 0.8, 0.8) mm and anisotropic strides [1,1,1], [1,2,2], [1,2,2], [2,2,2], ...
EXTRA_CASES = {
    "lits_aniso": ("plans_lits_aniso_plain.json", "dataset_lits_labels.json"),
}


def load_plans(case: str) -> tuple[dict, dict]:
    """(plans, dataset_json) dicts of a fixture case (fresh copies)."""
    plans_file, ds_file = {**PLANS_CASES, **EXTRA_CASES}[case]
    plans = json.loads((FIXTURES / plans_file).read_text())
    dataset_json = json.loads((FIXTURES / ds_file).read_text())
    return copy.deepcopy(plans), dataset_json


def managers(plans: dict, dataset_json: dict, configuration: str = "3d_fullres"):
    """(plans_manager, configuration_manager, num_input_channels, num_output_channels)."""
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(plans)
    cm = pm.get_configuration(configuration)
    n_in = determine_num_input_channels(pm, cm, dataset_json)
    n_out = pm.get_label_manager(dataset_json).num_segmentation_heads
    return pm, cm, n_in, n_out


def nnunet_subprocess_env(root: Path) -> dict[str, str]:
    """Environment for running nnU-Net's and nnunet-pde's commands as subprocesses on CPU:
    nnU-Net folders ``root/raw``, ``root/pre``, ``root/res``, our trainers, this venv's
    ``bin`` first on PATH, and nnU-Net's worker pools at 2 processes (default 8)."""
    import os
    import sys

    from nnunet_pde.env import EXT_TRAINER_VAR, trainer_dir

    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    env.update(
        nnUNet_raw=str(root / "raw"),
        nnUNet_preprocessed=str(root / "pre"),
        nnUNet_results=str(root / "res"),
        nnUNet_def_n_proc="2",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        **{EXT_TRAINER_VAR: str(trainer_dir())},
    )
    return env


def run_checked(cmd: list[str], env: dict[str, str], timeout: int = 900) -> str:
    """Run a command; its stdout, or an AssertionError with the tail of its output."""
    import subprocess

    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n"
            f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc.stdout
