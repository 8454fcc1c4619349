"""``benchmark run`` and ``benchmark report`` end to end on CPU, with real nnU-Net training.

make-dataset (6 brats-like cases, 32^3) -> nnUNetv2_plan_and_preprocess -> ``benchmark run``
with 2 smoke trainers x 2 folds through the local executor (2 at once), interrupted with
Ctrl-C (SIGINT) once a fold has written ``checkpoint_latest.pth`` -> the same command again,
which continues the interrupted folds with ``--c`` and trains the others -> once more, which
skips everything -> ``benchmark report``, whose per-case Dice must equal nnU-Net's own
``summary.json`` and whose statistics are recomputed here from the per-case values.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from nnunet_pde.benchmark.report import REPORT_FILES
from nnunet_pde.benchmark.trajectories import CURVES_CSV, TRAJECTORIES_CSV, TRAJECTORIES_PNG
from nnunet_pde.env import EXT_TRAINER_VAR, trainer_dir

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

T1, T2 = "nnUNetTrainerPDE3D_2epochs_4iters", "nnUNetTrainerPDE3D_Backbone_2epochs_4iters"
DATASET_ID = "983"
BIN = Path(sys.executable).parent


def _run(cmd: list[str], env: dict[str, str], timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n"
            f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


def _bench(*args: str) -> list[str]:
    return [sys.executable, "-m", "nnunet_pde.cli", "benchmark", *args]


def _manifests(results: Path) -> list[dict]:
    folder = next(results.glob("Dataset*/nnunet_pde_benchmark"))
    return [json.loads(p.read_text()) for p in sorted(folder.glob("manifest_*.json"))]


def test_benchmark_end_to_end(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    env.update(
        nnUNet_raw=str(tmp_path / "raw"),
        nnUNet_preprocessed=str(tmp_path / "preprocessed"),
        nnUNet_results=str(tmp_path / "results"),
        # nnU-Net's export/evaluation worker pools (default 8 spawned processes each).
        nnUNet_def_n_proc="1",
        **{EXT_TRAINER_VAR: str(trainer_dir())},
    )
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    _run(
        [
            "nnunet-pde",
            "make-dataset",
            "brats-like",
            "--id",
            DATASET_ID,
            "--size",
            "32",
            "--num-train",
            "6",
            "--num-test",
            "0",
            "--seed",
            "5",
        ],
        env,
    )
    _run(["nnUNetv2_plan_and_preprocess", "-d", DATASET_ID, "-c", "3d_fullres", "-np", "2"], env)
    # Augmentation in the main process from here on (not for planning: nnU-Net 2.8.1's
    # planner fails with 0).
    env["nnUNet_n_proc_DA"] = "0"
    results = tmp_path / "results"
    run_args = _bench(
        "run", DATASET_ID, "--trainers", T1, T2, "--folds", "0", "1", "--device", "cpu"
    )

    # 1) Dry run: the exact commands, nothing run.
    dry = _run([*run_args, "--dry-run"], env).stdout.splitlines()
    (name,) = [p.name for p in (tmp_path / "preprocessed").iterdir()]
    assert dry[1:] == [
        f"nnUNetv2_train {name} 3d_fullres {k} -tr {t} -p nnUNetPlans -device cpu"
        for t in (T1, T2)
        for k in (0, 1)
    ]

    # 2) Start the grid, 2 trainings at once; Ctrl-C once a fold has a checkpoint_latest.pth.
    log = open(tmp_path / "run1.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([*run_args, "--jobs", "2"], env=env, stdout=log, stderr=log)
    deadline = time.monotonic() + 600
    latest: list[Path] = []
    while time.monotonic() < deadline and proc.poll() is None:
        latest = list(results.glob("*/*/fold_*/checkpoint_latest.pth"))
        if latest:
            size = latest[0].stat().st_size
            time.sleep(2)  # let torch.save finish writing
            if latest[0].exists() and latest[0].stat().st_size == size:
                break
        time.sleep(0.5)
    assert latest, "no fold wrote checkpoint_latest.pth"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    log.close()
    first = (tmp_path / "run1.log").read_text()
    assert "interrupted" in first, first
    (m1,) = _manifests(results)
    assert m1["status"] == "interrupted"
    interrupted = {
        (j["trainer"], j["fold"])
        for j in m1["jobs"]
        if (Path(j["folder"]) / "checkpoint_latest.pth").exists()
    }
    assert interrupted

    # 3) The same command again: interrupted folds continue with --c, the rest train.
    second = _run([*run_args, "--jobs", "2"], env).stdout
    assert "summary:" in second and "FAILED" not in second
    m2 = _manifests(results)[-1]
    assert m2["status"] == "completed"
    for j in m2["jobs"]:
        key = (j["trainer"], j["fold"])
        if key in interrupted:
            assert j["action"] == "continue" and j["command"][-1] == "--c", j
        assert j["outcome"] in ("finished", "skipped"), j
        folder = Path(j["folder"])
        assert (folder / "checkpoint_final.pth").exists()
        assert (folder / "validation" / "summary.json").exists()
    assert m2["software"]["nnunetv2"].startswith("2.8")

    # 4) And again: nothing left to do.
    third = _run(run_args, env).stdout
    assert "4 finished (skipped), 0 to continue (--c), 0 to train" in third
    assert len(_manifests(results)) == 3

    # 5) The report.
    out = tmp_path / "report"
    rep = _run(
        _bench(
            "report",
            DATASET_ID,
            "--trainers",
            T2,
            T1,
            "--reference",
            T2,
            "--folds",
            "0",
            "1",
            "--output",
            str(out),
            "--bootstrap",
            "1000",
            "--workers",
            "1",
            "--no-progress",
        ),
        env,
    ).stdout
    # The PDE trainer's checkpoints hold its blocks' diagnostics, so the report adds their
    # trajectories; the backbone has no block and contributes no row. Both trainers' curves
    # (nnU-Net's logger) and their plateau table. No --runs: no runs files.
    assert f"wrote {len(REPORT_FILES) + 4} files to {out}" in rep
    with open(out / CURVES_CSV, newline="") as fh:
        curves = list(csv.DictReader(fh))
    assert {(r["trainer"], r["fold"], r["epoch"]) for r in curves} == {
        (t, f, e) for t in (T1, T2) for f in ("0", "1") for e in ("0", "1")
    }
    assert all(0.0 <= float(r["ema_pseudo_dice"]) <= 1.0 for r in curves)
    assert "did each training reach a plateau?" in (out / "tables.md").read_text()
    assert (out / TRAJECTORIES_PNG).stat().st_size > 0
    with open(out / TRAJECTORIES_CSV, newline="") as fh:
        trajectories = list(csv.DictReader(fh))
    assert trajectories and {r["trainer"] for r in trajectories} == {T1}
    assert {(r["fold"], r["epoch"]) for r in trajectories} == {
        (f, e) for f in ("0", "1") for e in ("0", "1")
    }
    assert all(np.isfinite(float(r["tau"])) for r in trajectories)
    splits = json.loads((tmp_path / "preprocessed" / name / "splits_final.json").read_text())
    val_cases = sorted(splits[0]["val"] + splits[1]["val"])
    with open(out / "per_case_metrics.csv", newline="") as fh:
        per_case = list(csv.DictReader(fh))
    regions = ["whole tumor", "tumor core", "enhancing tumor"]
    assert len(per_case) == 2 * len(val_cases) * len(regions)

    # Our Dice equals nnU-Net's own validation Dice, case by case.
    for t in (T1, T2):
        for k in (0, 1):
            fold = results / name / f"{t}__nnUNetPlans__3d_fullres" / f"fold_{k}"
            nn = json.loads((fold / "validation" / "summary.json").read_text())
            for entry in nn["metric_per_case"]:
                case = Path(entry["prediction_file"]).name.removesuffix(".nii.gz")
                for key, m in entry["metrics"].items():
                    (row,) = [
                        r
                        for r in per_case
                        if r["trainer"] == t and r["case"] == case and r["labels"] == key
                    ]
                    ours, theirs = float(row["dice"]), float(m["Dice"])
                    assert (np.isnan(ours) and np.isnan(theirs)) or abs(ours - theirs) < 1e-6

    with open(out / "summary.csv", newline="") as fh:
        summary = list(csv.DictReader(fh))
    assert len(summary) == 2 * len(regions) * 4
    for region in regions:

        def dice(t: str, region: str = region) -> dict[str, float]:
            return {
                r["case"]: float(r["dice"])
                for r in per_case
                if r["trainer"] == t and r["region"] == region
            }

        d1, d2 = dice(T1), dice(T2)
        row = next(
            r
            for r in summary
            if r["trainer"] == T1 and r["region"] == region and r["metric"] == "dice"
        )
        finite = [v for v in d1.values() if np.isfinite(v)]
        assert float(row["mean"]) == pytest.approx(np.mean(finite))
        assert float(row["ci_low"]) <= float(row["mean"]) <= float(row["ci_high"])
        pairs = [(d1[c], d2[c]) for c in val_cases if np.isfinite(d1[c]) and np.isfinite(d2[c])]
        diffs = [a - b for a, b in pairs]
        if pairs and any(diffs):
            expected = scipy.stats.wilcoxon([a for a, _ in pairs], [b for _, b in pairs]).pvalue
            assert float(row["p_value"]) == pytest.approx(expected)
    md = (out / "tables.md").read_text()
    assert f"| whole tumor | {T2} | {len(val_cases)} |" in md
    assert "reference" in md
    # two box plots (Dice, HD95), the block trajectories and the training curves
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 4
