"""Real MRI with expert labels through nnU-Net's own commands, on CPU.

A subset of MSD Task04 Hippocampus (``<repo>/../shared/data/msd_hippocampus``, read-only) is
staged as an MSD task folder, then: nnUNetv2_convert_MSD_dataset -> nnUNetv2_plan_and_preprocess
--verify_dataset_integrity -> nnUNetv2_train fold 0 -tr TRAINER -device cpu -> nnUNetv2_predict
of cases held back from the whole training subset -> nnUNetv2_evaluate_folder against their
expert labels, and a Dice per class (anterior, posterior) that an untrained or barely trained
network does not reach.

Measured on the project's 2-core CPU while a background benchmark and other suites ran on it
(load average 4-13, so the training got 0.25-0.6 of a core; nnunetv2 2.8.1; the PDE layer v2
landed on main between the first run and the last).
Subset: the first 25 of the 200 cases (nnU-Net then plans batch 2 instead of 7, patch
40x56x40; fold 0 = 20 training + 5 validation cases) and the last 10 held back:

- convert 1 s, plan_and_preprocess 26 s, evaluate 12 s;
- 4 epochs x 8 iterations (32): fold-0 validation Dice 0.35; held-back Dice anterior 0.227,
  posterior 0.460, i.e. too short for 0.5; nnUNetv2_train 599 s, nnUNetv2_predict of the 10
  cases with mirroring 278 s (hence --disable_tta below, about 8x less inference);
- a training iteration costs about 7 CPU-seconds (batch 2), so about 4 s of wall time on an
  idle 2-core machine: the 80 iterations of TRAINER are about 5-6 min there, the test about
  7-8 min (CI budget: 45 min for everything);
- 10 epochs x 8 iterations (80): the one-batch pseudo Dice was 0.12 / 0.06 after 6 epochs,
  0.48 / 0.37 after 7 and 0.47 / 0.53 after 8 (the run was cut by a time-out): learning
  starts after about 60 iterations and 80 leave no margin above 0.5;
- on the full 160-case folds (batch 7) 36 iterations gave fold-0 validation Dice between
  0.10 and 0.57 for the anterior class in repeated runs (docs/results.md): short trainings
  are very noisy, so TRAINER is the demo's 20 epochs x 8 iterations (160, about 11 min of
  training on an idle 2-core machine, the test about 13 min). On the shared development
  machine (load average 9-15, about 300 s per epoch) this length reached a one-batch pseudo
  Dice of 0.44 / 0.41 after 4 epochs, 0.62 / 0.57 after 5 and 0.66 / 0.57 after 6, before
  the then 30-minute limit per command stopped it. A complete run at load average about 5
  (2026-12-01): held-back Dice anterior 0.760, posterior 0.778; durations convert 3 s,
  plan_and_preprocess 54 s, train 1256 s, predict 35 s, evaluate 6 s, total 1354 s.

MIN_DICE = 0.5 is the issue's "only a model that learned" bar: the 32-iteration model, which
had already learned something, stays below it for the anterior class.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
from plan_fixtures import REPO, nnunet_subprocess_env, run_checked

pytestmark = [pytest.mark.e2e, pytest.mark.real_data]

#: the shared data, resolved relative to the repository as the README there says
SHARED = REPO.parent / "shared" / "data" / "msd_hippocampus"
TASK = SHARED / "Task04_Hippocampus"

TRAINER = os.environ.get("NNUNET_PDE_REAL_DATA_TRAINER", "nnUNetTrainerPDE3D_Demo")
#: training subset (first cases in sorted order; nnU-Net's fold 0 trains on 4/5 of them) and
#: cases held back from it (last ones in sorted order), all from the shared 200
NUM_TRAIN = 25
NUM_HELD_BACK = 10
#: Dice per class that the held-back predictions must reach (see the measurement above)
MIN_DICE = 0.5
CLASSES = {"1": "anterior", "2": "posterior"}


def _run(cmd: list[str], env: dict[str, str], timeout: int = 1800) -> str:
    return run_checked(cmd, env, timeout)


def _stage_subset(stage: Path, train: list[str], held_back: list[str]) -> Path:
    """An MSD task folder of symlinks to the shared files: ``imagesTr``/``labelsTr`` with the
    training subset, ``imagesTs`` with the held-back images (nnUNetv2_convert_MSD_dataset
    asserts that imagesTs exists and converts every file it finds in the three folders), and
    a dataset.json whose ``numTraining``/``training``/``test`` list only these cases (the
    converter keeps ``numTraining``, which --verify_dataset_integrity checks)."""
    task = stage / TASK.name
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (task / sub).mkdir(parents=True)
    for case in train:
        (task / "imagesTr" / f"{case}.nii.gz").symlink_to(TASK / "imagesTr" / f"{case}.nii.gz")
        (task / "labelsTr" / f"{case}.nii.gz").symlink_to(TASK / "labelsTr" / f"{case}.nii.gz")
    for case in held_back:
        (task / "imagesTs" / f"{case}.nii.gz").symlink_to(TASK / "imagesTr" / f"{case}.nii.gz")
    ds = json.loads((TASK / "dataset.json").read_text())
    ds["training"] = [
        {"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in train
    ]
    ds["test"] = [f"./imagesTs/{c}.nii.gz" for c in held_back]
    ds["numTraining"], ds["numTest"] = len(train), len(held_back)
    (task / "dataset.json").write_text(json.dumps(ds, indent=2))
    return task


class RealDataRun:
    """The whole pipeline on the subset; durations in seconds per step."""

    def __init__(self, root: Path):
        cases = sorted(p.name[: -len(".nii.gz")] for p in (TASK / "labelsTr").glob("*.nii.gz"))
        assert len(cases) >= NUM_TRAIN + NUM_HELD_BACK, f"only {len(cases)} cases in {TASK}"
        self.train, self.held_back = cases[:NUM_TRAIN], cases[-NUM_HELD_BACK:]
        self.durations: dict[str, float] = {}
        env = nnunet_subprocess_env(root)
        task = _stage_subset(root / "msd", self.train, self.held_back)

        self._step("convert", ["nnUNetv2_convert_MSD_dataset", "-i", str(task), "-np", "2"], env)
        (self.raw,) = (root / "raw").glob("Dataset004_*")
        self._step(
            "plan_and_preprocess",
            [
                "nnUNetv2_plan_and_preprocess", "-d", "4", "-c", "3d_fullres",
                "--verify_dataset_integrity", "-npfp", "2", "-np", "2",
            ],
            env,
        )
        (self.preprocessed,) = (root / "pre").glob("Dataset004_*")
        # augmentation in the main process, as in the other end-to-end tests (not for
        # planning: nnU-Net 2.8.1's planner calls torch.set_num_threads(nnUNet_n_proc_DA))
        env["nnUNet_n_proc_DA"] = "0"
        self.train_log = self._step(
            "train", ["nnUNetv2_train", "4", "3d_fullres", "0", "-tr", TRAINER, "-device", "cpu"],
            env,
        )
        self.pred = root / "pred"
        self._step(
            "predict",
            [
                "nnUNetv2_predict", "-i", str(self.raw / "imagesTs"), "-o", str(self.pred),
                "-d", "4", "-c", "3d_fullres", "-f", "0", "-tr", TRAINER, "-device", "cpu",
                "-npp", "1", "-nps", "1", "--disable_tta",
            ],
            env,
        )
        labels = root / "labels_held_back"
        labels.mkdir()
        for case in self.held_back:
            (labels / f"{case}.nii.gz").symlink_to(TASK / "labelsTr" / f"{case}.nii.gz")
        self._step(
            "evaluate",
            [
                "nnUNetv2_evaluate_folder", str(labels), str(self.pred),
                "-djfile", str(self.raw / "dataset.json"),
                "-pfile", str(self.preprocessed / "nnUNetPlans.json"), "-np", "2",
            ],
            env,
        )
        self.summary = json.loads((self.pred / "summary.json").read_text())
        self.dice = {name: self.summary["mean"][k]["Dice"] for k, name in CLASSES.items()}
        fold0 = root / "res" / self.raw.name / f"{TRAINER}__nnUNetPlans__3d_fullres" / "fold_0"
        self.fold0 = fold0
        self.fold_train = json.loads((self.preprocessed / "splits_final.json").read_text())[0]

        total = sum(self.durations.values())
        print(
            f"\n[real data] MSD Hippocampus, {NUM_TRAIN} cases (fold 0 trains on "
            f"{len(self.fold_train['train'])}), {NUM_HELD_BACK} held back, trainer {TRAINER}\n"
            "[real data] Dice on held-back cases: "
            + ", ".join(f"{n} {d:.3f}" for n, d in self.dice.items())
            + "\n[real data] durations (s): "
            + ", ".join(f"{k} {v:.0f}" for k, v in self.durations.items())
            + f", total {total:.0f}",
            flush=True,
        )

    def _step(self, name: str, cmd: list[str], env: dict[str, str]) -> str:
        start = time.monotonic()
        # generous: 160 iterations take about 11 min on an idle 2-core machine, but 30 min
        # were not enough at load average 10-15 (measured)
        out = _run(cmd, env, timeout=3600)
        self.durations[name] = time.monotonic() - start
        return out


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> RealDataRun:
    if not SHARED.is_dir():
        reason = f"real data absent: {SHARED} does not exist (MSD Task04 Hippocampus)"
        print(f"SKIP: {reason}", file=sys.stderr)
        pytest.skip(reason)
    return RealDataRun(tmp_path_factory.mktemp("real_data"))


def test_converted_subset_is_what_was_staged(real_run):
    ds = json.loads((real_run.raw / "dataset.json").read_text())
    assert ds["labels"] == {"background": 0, "Anterior": 1, "Posterior": 2}
    assert ds["numTraining"] == NUM_TRAIN
    assert sorted(p.name for p in (real_run.raw / "labelsTr").glob("*.nii.gz")) == [
        f"{c}.nii.gz" for c in real_run.train
    ]
    assert sorted(p.name for p in (real_run.raw / "imagesTs").glob("*.nii.gz")) == [
        f"{c}_0000.nii.gz" for c in real_run.held_back
    ]
    # the held-back cases took no part in training (nor in fold 0's validation)
    assert not set(real_run.held_back) & set(real_run.train)
    assert (real_run.fold0 / "checkpoint_final.pth").is_file()


def test_held_back_dice_per_class_shows_the_model_learned(real_run):
    assert len(real_run.summary["metric_per_case"]) == NUM_HELD_BACK
    for name, dice in real_run.dice.items():
        assert dice >= MIN_DICE, (
            f"{name} hippocampus: mean Dice {dice:.3f} on {NUM_HELD_BACK} held-back cases "
            f"< {MIN_DICE} after {TRAINER}"
        )
