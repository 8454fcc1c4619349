"""End to end through nnU-Net's own commands, run as subprocesses on CPU:

make-dataset -> nnUNetv2_plan_and_preprocess --verify_dataset_integrity ->
nnUNetv2_train -tr nnUNetTrainerPDE3D_2epochs_4iters -device cpu -> nnUNetv2_predict ->
nnUNetv2_evaluate_folder against labelsTs; once for the BraTS-like regions dataset and once
for the LiTS-like labels dataset (anisotropic spacing). On the LiTS-like dataset also: a
warm start from a stock nnUNetTrainer checkpoint with -pretrained_weights, and the model's
lifecycle (interrupt + --c resume, find_best_configuration, export/import zip).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from plan_fixtures import run_checked

from nnunet_pde.commands import build_predict_command, build_train_command
from nnunet_pde.env import EXT_TRAINER_VAR, trainer_dir

pytestmark = pytest.mark.e2e

SMOKE = "nnUNetTrainerPDE3D_2epochs_4iters"
BIN = Path(sys.executable).parent

DATASETS = {
    # kind: (dataset id, make-dataset size)
    "brats-like": (971, "32"),
    "lits-like": (972, "16,40,40"),
}


def _run(cmd: Sequence[str], env: dict[str, str], timeout: int = 900) -> str:
    return run_checked(cmd, env, timeout)


class Workspace:
    """nnU-Net folders for one dataset, with the trained smoke model and predictions."""

    def __init__(self, root: Path, kind: str):
        self.root = root
        self.kind = kind
        self.dataset_id, size = DATASETS[kind]
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
        self.env.update(
            nnUNet_raw=str(root / "raw"),
            nnUNet_preprocessed=str(root / "preprocessed"),
            nnUNet_results=str(root / "results"),
            # nnU-Net's worker pools (export, validation) default to 8 processes; 2 cores here
            nnUNet_def_n_proc="2",
            **{EXT_TRAINER_VAR: str(trainer_dir())},
        )
        self.env["PATH"] = f"{BIN}{os.pathsep}{self.env.get('PATH', '')}"
        self.did = str(self.dataset_id)
        _run(
            [
                "nnunet-pde",
                "make-dataset",
                kind,
                "--id",
                self.did,
                "--num-train",
                "6",
                "--num-test",
                "2",
                "--size",
                size,
                "--seed",
                "3",
            ],
            self.env,
        )
        (self.raw,) = (root / "raw").glob(f"Dataset{self.dataset_id}_*")
        _run(
            [
                "nnUNetv2_plan_and_preprocess",
                "-d",
                self.did,
                "-c",
                "3d_fullres",
                "--verify_dataset_integrity",
                "-np",
                "2",
            ],
            self.env,
        )
        (self.preprocessed,) = (root / "preprocessed").glob(f"Dataset{self.dataset_id}_*")
        # Augmentation in the main process from here on: predictable on 2 cores. (Not for
        # planning: nnU-Net 2.8.1's planner calls torch.set_num_threads(nnUNet_n_proc_DA),
        # which fails for 0.)
        self.env["nnUNet_n_proc_DA"] = "0"
        self.train_log = _run(
            build_train_command(self.did, "3d_fullres", 0, SMOKE, "nnUNetPlans", "cpu"), self.env
        )
        self.model_dir = root / "results" / self.raw.name / f"{SMOKE}__nnUNetPlans__3d_fullres"
        self.pred = root / "pred"
        _run(
            build_predict_command(
                self.raw / "imagesTs",
                self.pred,
                self.did,
                "3d_fullres",
                "nnUNetPlans",
                SMOKE,
                [0],
                "cpu",
            ),
            self.env,
        )
        _run(
            [
                "nnUNetv2_evaluate_folder",
                str(self.raw / "labelsTs"),
                str(self.pred),
                "-djfile",
                str(self.raw / "dataset.json"),
                "-pfile",
                str(self.preprocessed / "nnUNetPlans.json"),
            ],
            self.env,
        )
        self.summary = json.loads((self.pred / "summary.json").read_text())


@pytest.fixture(scope="module", params=sorted(DATASETS))
def workspace(request, tmp_path_factory) -> Workspace:
    return Workspace(tmp_path_factory.mktemp(request.param), request.param)


def test_training_writes_a_pde3d_checkpoint_and_fold_validation(workspace):
    fold = workspace.model_dir / "fold_0"
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["trainer_name"] == SMOKE
    assert ckpt["current_epoch"] == 2
    pde_keys = [k for k in ckpt["network_weights"] if ".pde." in k]
    assert pde_keys, "the trained network has no PDE block"
    # the gate left its zero initialisation: the block takes part in training
    gates = [v for k, v in ckpt["network_weights"].items() if k.endswith(".pde.gamma")]
    assert gates and all(torch.count_nonzero(g) > 0 for g in gates)
    # the blocks' state per epoch (PDEDiagnosticsMixin): logged, printed and plotted
    diagnostics = {k: v for k, v in ckpt["logging"].items() if k.startswith("pde_stage")}
    suffixes = ("_gamma_abs_mean", "_gamma_abs_max", "_tau", "_contribution")
    blocks = {k[: -len(x)] for k in diagnostics for x in suffixes if k.endswith(x)}
    # (the state dict lists each gate twice: the decoder keeps a reference to the encoder)
    assert blocks and len(diagnostics) == 4 * len(blocks)
    assert all(len(v) == 2 and np.all(np.isfinite(v)) for v in diagnostics.values())
    contribution = [v for k, v in diagnostics.items() if k.endswith("_contribution")]
    assert all(c[1] > 0 for c in contribution)  # the gate opened during epoch 0
    assert (fold / "progress_pde_blocks.png").is_file()
    assert "contribution ||y-x||/||x||" in workspace.train_log
    val = json.loads((fold / "validation" / "summary.json").read_text())
    assert val["foreground_mean"]["Dice"] >= 0


def test_predictions_match_the_test_labels_geometry(workspace):
    refs = sorted((workspace.raw / "labelsTs").glob("*.nii.gz"))
    assert len(refs) == 2
    for ref_file in refs:
        ref = sitk.ReadImage(str(ref_file))
        pred = sitk.ReadImage(str(workspace.pred / ref_file.name))
        assert pred.GetSize() == ref.GetSize()
        assert np.allclose(pred.GetSpacing(), ref.GetSpacing())
        labels = set(np.unique(sitk.GetArrayFromImage(pred)).tolist())
        assert labels <= {0, 1, 2, 3}


def test_dice_against_labels_ts_covers_every_region(workspace):
    ds = json.loads((workspace.raw / "dataset.json").read_text())
    n_fg = len([k for k in ds["labels"] if k != "background"])
    assert len(workspace.summary["mean"]) == n_fg
    for metrics in workspace.summary["mean"].values():
        assert 0.0 <= metrics["Dice"] <= 1.0 or np.isnan(metrics["Dice"])
    assert len(workspace.summary["metric_per_case"]) == 2


def test_warmstart_from_a_stock_checkpoint_with_pretrained_weights(workspace, tmp_path):
    if workspace.kind != "lits-like":
        pytest.skip("warm-start is exercised once, on the labels dataset")
    # a real stock checkpoint, written by nnU-Net's own trainer on this dataset
    code = (
        "import torch, json\n"
        "from batchgenerators.utilities.file_and_folder_operations import load_json\n"
        "from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer\n"
        f"plans = load_json({str(workspace.preprocessed / 'nnUNetPlans.json')!r})\n"
        f"ds = load_json({str(workspace.preprocessed / 'dataset.json')!r})\n"
        "plans['continue_training'] = False\n"
        "t = nnUNetTrainer(plans, '3d_fullres', 1, ds, torch.device('cpu'))\n"
        "t.initialize()\n"
        f"t.save_checkpoint({str(tmp_path / 'stock.pth')!r})\n"
    )
    _run([sys.executable, "-c", code], workspace.env)
    _run(
        [
            "nnunet-pde",
            "warmstart",
            str(tmp_path / "stock.pth"),
            str(tmp_path / "pde.pth"),
            "--trainer",
            SMOKE,
        ],
        workspace.env,
    )
    log = _run(
        [
            "nnUNetv2_train",
            workspace.did,
            "3d_fullres",
            "1",
            "-tr",
            SMOKE,
            "-device",
            "cpu",
            "-pretrained_weights",
            str(tmp_path / "pde.pth"),
        ],
        workspace.env,
    )
    assert "Loading pretrained weights" in log
    assert (workspace.model_dir / "fold_1" / "checkpoint_final.pth").is_file()


def test_resume_find_best_configuration_export_and_import(workspace, tmp_path):
    """Interrupt a training after its first epoch, resume it with --c, then run
    nnUNetv2_find_best_configuration over two folds, export the model to a zip, install
    it into an empty results folder and predict from there."""
    if workspace.kind != "lits-like":
        pytest.skip("the model lifecycle is exercised once, on the labels dataset")
    fold2 = workspace.model_dir / "fold_2"
    log_file = tmp_path / "interrupted.log"
    with open(log_file, "w") as log:
        proc = subprocess.Popen(
            ["nnUNetv2_train", workspace.did, "3d_fullres", "2", "-tr", SMOKE, "-device", "cpu"],
            env=workspace.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        # "Epoch 1" is printed after epoch 0 ended, i.e. after checkpoint_latest.pth was saved
        deadline = time.monotonic() + 600
        while "Epoch 1" not in log_file.read_text() and proc.poll() is None:
            assert time.monotonic() < deadline, "training did not reach epoch 1"
            time.sleep(0.2)
        proc.kill()
        proc.wait()
    assert (fold2 / "checkpoint_latest.pth").is_file()
    assert not (fold2 / "checkpoint_final.pth").exists(), "killed too late"

    resumed = _run(
        ["nnUNetv2_train", workspace.did, "3d_fullres", "2", "-tr", SMOKE, "-device", "cpu", "--c"],
        workspace.env,
    )
    assert "Epoch 1" in resumed and "Epoch 0" not in resumed
    final = torch.load(fold2 / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 2
    logged = final["logging"]
    for key in ("train_loss_seg", "train_loss_pde", "train_loss_tv"):
        assert len(logged[key]) == 2 and all(np.isfinite(logged[key])), key
    diagnostics = [k for k in logged if k.startswith("pde_stage")]
    assert diagnostics and all(len(logged[k]) == 2 for k in diagnostics)

    _run(
        [
            "nnUNetv2_find_best_configuration",
            workspace.did,
            "-c",
            "3d_fullres",
            "-tr",
            SMOKE,
            "-f",
            "0",
            "2",
            "-np",
            "2",
        ],
        workspace.env,
    )
    results_ds = workspace.root / "results" / workspace.raw.name
    info = json.loads((results_ds / "inference_information.json").read_text())
    assert SMOKE in json.dumps(info["best_model_or_ensemble"])

    zip_file = tmp_path / "model.zip"
    _run(
        [
            "nnUNetv2_export_model_to_zip",
            "-d",
            workspace.did,
            "-o",
            str(zip_file),
            "-c",
            "3d_fullres",
            "-tr",
            SMOKE,
            "-f",
            "0",
            "2",
        ],
        workspace.env,
    )
    env2 = dict(workspace.env, nnUNet_results=str(tmp_path / "results2"))
    _run(["nnUNetv2_install_pretrained_model_from_zip", str(zip_file)], env2)
    pred2 = tmp_path / "pred2"
    _run(
        [
            "nnUNetv2_predict",
            "-i",
            str(workspace.raw / "imagesTs"),
            "-o",
            str(pred2),
            "-d",
            workspace.did,
            "-c",
            "3d_fullres",
            "-f",
            "0",
            "2",
            "-tr",
            SMOKE,
            "-device",
            "cpu",
            "--disable_tta",  # mirroring is exercised by the workspace's prediction
        ],
        env2,
    )
    assert sorted(p.name for p in pred2.glob("*.nii.gz")) == sorted(
        p.name for p in (workspace.raw / "labelsTs").glob("*.nii.gz")
    )
