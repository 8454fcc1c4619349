"""scripts/campaign_v2.sh report: which rows enter the three v2 reports (no training, no report
is computed here: the rows are chosen from record files, and a report without its reference
row or a second row is skipped with a message that names what is recorded)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from plan_fixtures import REPO

from nnunet_pde.env import list_trainers

SCRIPT = REPO / "scripts" / "campaign_v2.sh"
S = "25epochs_20iters_noTTA"


def _record(records: Path, trainer: str, run: int, files=("record.json", "metrics_per_case.csv")):
    folder = records / f"{trainer}__nnUNetPlans__3d_fullres" / f"run_{run}" / "fold_0"
    folder.mkdir(parents=True)
    for name in files:
        (folder / name).write_text("")


def _report(records: Path, reports: Path, runs: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RECORDS": str(records), "REPORTS": str(reports)}
    env["ROOT"] = str(records.parent / "root")  # no nnU-Net folders are needed
    return subprocess.run(
        ["bash", str(SCRIPT), "report", runs], capture_output=True, text=True, env=env, timeout=120
    )


def test_report_skips_each_regime_without_its_reference_and_a_second_complete_row(tmp_path):
    records, reports = tmp_path / "records", tmp_path / "reports"
    records.mkdir()
    # the backbone has runs 1-2, the full model run 1 and a half-written run 2 (record.json
    # without its CSV, which benchmark report does not read as a record), _LossOnly run 2 only
    for run in (1, 2):
        _record(records, f"nnUNetTrainerPDE3D_Backbone_{S}_Frac10", run)
    _record(records, f"nnUNetTrainerPDE3D_{S}_Frac10", 1)
    _record(records, f"nnUNetTrainerPDE3D_{S}_Frac10", 2, files=("record.json",))
    _record(records, f"nnUNetTrainerPDE3D_LossOnly_{S}_Frac10", 2)

    proc = _report(records, reports, "2")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    few = next(line for line in lines if line.startswith("few_labels: skipped"))
    # only the backbone has both runs complete: the full model's run 2 is half-written,
    # _LossOnly lacks run 1
    assert f"recorded for: nnUNetTrainerPDE3D_Backbone_{S}_Frac10;" in few
    gate = next(line for line in lines if line.startswith("gate_candidates: skipped"))
    assert "recorded for: none;" in gate and f"needs nnUNetTrainerPDE3D_{S}_Frac10" in gate
    full = "full_labels: skipped (runs 1..2 recorded for: none"
    assert any(line.startswith(full) for line in lines)
    assert not reports.exists()  # nothing was written

    # with N = 1 the full model and the backbone both qualify: the few-label report is attempted
    # (and fails here, on record files that hold nothing, instead of being skipped)
    proc = _report(records, reports, "1")
    assert "few_labels: skipped" not in proc.stdout
    assert proc.returncode != 0 and "nnUNetTrainerPDE3D_Backbone" in proc.stderr


def test_rows_train_every_few_label_row_once_decisive_rows_first_and_name_real_trainers():
    env = {**os.environ, "ROOT": "/nonexistent"}  # `rows` reads no nnU-Net folder
    proc = subprocess.run(
        ["bash", str(SCRIPT), "rows"], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    rows = dict(line.split(": ", 1) for line in proc.stdout.splitlines())
    few = rows["few labels"].split()
    order = rows["few labels, training order"].split()
    full = rows["full labels"].split()
    # the reports take the first row as the reference: the backbone in both regimes
    assert few[0] == f"nnUNetTrainerPDE3D_Backbone_{S}_Frac10"
    assert full[0] == f"nnUNetTrainerPDE3D_Backbone_{S}"
    # the training order is a permutation (no row dropped or trained twice) that starts with
    # the full model and the two gate candidates (the rows issue 22's step 2 waits for)
    assert sorted(order) == sorted(few) and len(set(order)) == len(few) == 6
    assert order[:3] == [
        f"nnUNetTrainerPDE3D_{S}_Frac10",
        f"nnUNetTrainerPDE3D_PDELR10_{S}_Frac10",
        f"nnUNetTrainerPDE3D_GateScale10_{S}_Frac10",
    ]
    # every row is a trainer class the repository defines (a typo would train nothing)
    assert set(few + full) <= set(list_trainers()), set(few + full) - set(list_trainers())
