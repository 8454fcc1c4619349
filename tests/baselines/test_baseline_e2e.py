"""End to end through nnU-Net's own commands on CPU, for each baseline's smoke variant:
nnUNetv2_plan_and_preprocess -> nnUNetv2_train -tr <baseline>_2epochs_4iters ->
nnUNetv2_predict, on a small LiTS-like dataset (labels, anisotropic spacing). Checks that the
results folder's plans.json carries the patch size the network needs (V-Net adapts it) and
that prediction, which rebuilds the network on the class from that plans.json, works."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from plan_fixtures import nnunet_subprocess_env, run_checked

from nnunet_pde.commands import build_predict_command, build_train_command

pytestmark = pytest.mark.e2e

DATASET_ID = "973"
SMOKE = [
    "nnUNetTrainerVNet_2epochs_4iters",
    "nnUNetTrainerSwinUNet3D_2epochs_4iters",
    "nnUNetTrainerESUNet_2epochs_4iters",
]


def _run(cmd: Sequence[str], env: dict[str, str], timeout: int = 1800) -> str:
    return run_checked(cmd, env, timeout)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A planned and preprocessed LiTS-like dataset and the environment to use it."""
    root = tmp_path_factory.mktemp("baselines_e2e")
    env = nnunet_subprocess_env(root)
    _run(
        [
            "nnunet-pde",
            "make-dataset",
            "lits-like",
            "--id",
            DATASET_ID,
            "--num-train",
            "5",
            "--num-test",
            "1",
            "--size",
            "16,40,40",
            "--seed",
            "5",
        ],
        env,
    )
    _run(
        ["nnUNetv2_plan_and_preprocess", "-d", DATASET_ID, "-c", "3d_fullres", "-np", "2"],
        env,
    )
    env["nnUNet_n_proc_DA"] = "0"  # augmentation in the main process: predictable on 2 cores
    return root, env


@pytest.mark.parametrize("trainer", SMOKE)
def test_train_then_predict(prepared, trainer):
    root, env = prepared
    (raw,) = (root / "raw").glob(f"Dataset{DATASET_ID}_*")
    _run(build_train_command(DATASET_ID, "3d_fullres", 0, trainer, "nnUNetPlans", "cpu"), env)
    model = root / "res" / raw.name / f"{trainer}__nnUNetPlans__3d_fullres"
    ckpt = torch.load(
        model / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False
    )
    assert ckpt["trainer_name"] == trainer and ckpt["current_epoch"] == 2
    planned = json.loads((root / "pre" / raw.name / "nnUNetPlans.json").read_text())
    saved = json.loads((model / "plans.json").read_text())
    patch = saved["configurations"]["3d_fullres"]["patch_size"]
    if "VNet" in trainer:
        assert all(p % 16 == 0 for p in patch)
    else:
        assert patch == planned["configurations"]["3d_fullres"]["patch_size"]
    pred = root / f"pred_{trainer}"
    _run(
        build_predict_command(
            raw / "imagesTs",
            pred,
            DATASET_ID,
            "3d_fullres",
            "nnUNetPlans",
            trainer,
            [0],
            "cpu",
            extra_args=["--disable_tta"],
        ),
        env,
    )
    (ref_file,) = sorted((raw / "labelsTs").glob("*.nii.gz"))
    ref, out = sitk.ReadImage(str(ref_file)), sitk.ReadImage(str(pred / ref_file.name))
    assert out.GetSize() == ref.GetSize()
    assert np.allclose(out.GetSpacing(), ref.GetSpacing())
