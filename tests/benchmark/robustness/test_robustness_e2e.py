"""The three robustness regimes end to end through nnU-Net's commands on CPU.

make-dataset (clean, 973) -> derive noisy-labels (dilate 2 mm, 974) -> plan_and_preprocess
both (with --verify_dataset_integrity) -> nnUNetv2_train a short few-label trainer on both and
the full-data trainer on the clean one -> ``benchmark robustness noisy-labels`` (scored
against the clean labels), ``few-labels`` and, after ``derive shifted-images``,
``scanner-shift --predict`` (real nnUNetv2_predict runs).
"""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from plan_fixtures import nnunet_subprocess_env

from nnunet_pde.metrics.evaluate import evaluate_segmentations, regions_from_dataset_json

pytestmark = pytest.mark.e2e

CLEAN, NOISY = "973", "974"
FRAC = "nnUNetTrainerPDE3D_Backbone_2epochs_4iters_Frac50"
FULL = "nnUNetTrainerPDE3D_Backbone_2epochs_4iters"


def _run(cmd: list[str], env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("robust")
    env = nnunet_subprocess_env(root)
    make = ["nnunet-pde", "make-dataset", "brats-like", "--id", CLEAN, "--size", "32"]
    _run([*make, "--num-train", "5", "--num-test", "2", "--seed", "4"], env)
    derive = ["nnunet-pde", "derive", "noisy-labels", CLEAN, "--id", NOISY, "--mode", "dilate"]
    _run([*derive, "--magnitude", "2"], env)
    for d in (CLEAN, NOISY):
        plan = ["nnUNetv2_plan_and_preprocess", "-d", d, "-c", "3d_fullres", "-np", "2"]
        _run([*plan, "--verify_dataset_integrity"], env)
    train_env = {**env, "nnUNet_n_proc_DA": "0"}
    for d, trainer in ((CLEAN, FRAC), (NOISY, FRAC), (CLEAN, FULL)):
        _run(["nnUNetv2_train", d, "3d_fullres", "0", "-tr", trainer, "-device", "cpu"], train_env)
    return root, env


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _dataset(root: Path, did: str) -> Path:
    (folder,) = (root / "raw").glob(f"Dataset{did}_*")
    return folder


def test_few_label_trainer_used_half_the_fold(trained):
    root, _ = trained
    (fold,) = (root / "res").glob(f"Dataset{NOISY}_*/{FRAC}__nnUNetPlans__3d_fullres/fold_0")
    record = json.loads((fold / "few_label_subset.json").read_text())
    splits = json.loads(
        next((root / "pre").glob(f"Dataset{NOISY}_*/splits_final.json")).read_text()
    )
    assert record["n_total"] == len(splits[0]["train"]) == 4 and record["n_selected"] == 2
    assert record["val_keys"] == splits[0]["val"]
    # nnU-Net validated every validation case, not only the subset's
    predicted = sorted(p.name[: -len(".nii.gz")] for p in (fold / "validation").glob("*.nii.gz"))
    assert predicted == sorted(splits[0]["val"])


def test_noisy_labels_report_scores_against_the_clean_labels(trained):
    root, env = trained
    out = root / "noisy_report"
    cmd = ["nnunet-pde", "benchmark", "robustness", "noisy-labels", "--datasets", CLEAN, NOISY]
    _run([*cmd, "--trainers", FRAC, "--folds", "0", "--output", str(out), "-j", "1"], env)
    assert {"per_case.csv", "summary.csv", "auc.csv", "tables.md"} <= {
        p.name for p in out.iterdir()
    }
    noisy = _dataset(root, NOISY)
    dataset_json = json.loads((noisy / "dataset.json").read_text())
    regions, _ = regions_from_dataset_json(dataset_json)
    (fold,) = (root / "res").glob(f"Dataset{NOISY}_*/{FRAC}__nnUNetPlans__3d_fullres/fold_0")
    rows = [r for r in _rows(out / "per_case.csv") if r["condition"].startswith(f"Dataset{NOISY}")]
    assert rows
    checked_difference = False
    for row in rows:
        pred = sitk.ReadImage(str(fold / "validation" / f"{row['case']}.nii.gz"))
        clean = sitk.ReadImage(str(noisy / "labelsTr_clean" / f"{row['case']}.nii.gz"))
        corrupted = sitk.ReadImage(str(noisy / "labelsTr" / f"{row['case']}.nii.gz"))
        spacing = pred.GetSpacing()[::-1]
        p = sitk.GetArrayFromImage(pred)
        by_region = {
            reg.name: (m_clean, m_noisy)
            for (reg, m_clean), (_, m_noisy) in zip(
                evaluate_segmentations(p, sitk.GetArrayFromImage(clean), spacing, regions),
                evaluate_segmentations(p, sitk.GetArrayFromImage(corrupted), spacing, regions),
                strict=True,
            )
        }
        m_clean, m_noisy = by_region[row["region"]]
        assert float(row["dice"]) == pytest.approx(m_clean.dice, abs=1e-6, nan_ok=True)
        if np.isfinite(m_clean.dice) and abs(m_clean.dice - m_noisy.dice) > 1e-3:
            checked_difference = True
    # the noisy labels differ from the clean ones, so scoring against them would differ
    assert checked_difference


def test_few_labels_report_pools_the_fraction_and_the_full_trainer(trained):
    root, env = trained
    out = root / "few_report"
    cmd = ["nnunet-pde", "benchmark", "robustness", "few-labels", CLEAN, "--trainers", FULL]
    _run([*cmd, "--fractions", "50", "--folds", "0", "--output", str(out), "-j", "1"], env)
    conditions = {r["condition"] for r in _rows(out / "per_case.csv")}
    assert conditions == {FULL, FRAC}
    auc = _rows(out / "auc.csv")
    assert auc and all(r["trainer"] == FULL for r in auc)


def test_scanner_shift_report_predicts_every_level_with_nnunet(trained):
    root, env = trained
    shifted = root / "shift"
    derive = ["nnunet-pde", "derive", "shifted-images", CLEAN, "--output", str(shifted)]
    _run([*derive, "--perturbations", "noise", "bias_field", "--levels", "1", "--no-progress"], env)
    out = root / "shift_report"
    cmd = ["nnunet-pde", "benchmark", "robustness", "scanner-shift", CLEAN, "--shifted"]
    cmd += [str(shifted), "--trainers", FULL, "--folds", "0", "--predict", "--device", "cpu"]
    _run([*cmd, "--extra-args", "-npp 1 -nps 1", "--output", str(out), "-j", "1"], env)
    pred = shifted / "predictions" / FULL
    for sub in ("clean", "noise/level1", "bias_field/level1"):
        assert len(list((pred / sub).glob("*.nii.gz"))) == 2, sub
    conditions = {r["condition"] for r in _rows(out / "per_case.csv")}
    assert conditions == {"clean", "noise/level1", "bias_field/level1"}
    tables = (out / "tables.md").read_text()
    assert "noise" in tables and "bias_field" in tables
