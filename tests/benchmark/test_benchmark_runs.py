"""Repeated trainings: ``benchmark run --runs N`` trains each run in its own results tree,
``benchmark report --runs N`` pools them and reports the between-run spread.

The report's run statistics are checked against values computed here from the label maps
(Dice by numpy) and against ``scipy.stats.ttest_ind`` (Welch).
"""

from __future__ import annotations

import csv
import json
import math
import shlex
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
from benchmark_fixtures import (
    CASES,
    CONF,
    DATASET,
    PLANS,
    make_nnunet_env,
    read_calls,
    reference_map,
    write_fake_trainer,
    write_fold_predictions,
)

from nnunet_pde.benchmark.report import RUNS_CSV, make_report
from nnunet_pde.benchmark.run import run_benchmark
from nnunet_pde.benchmark.runs import (
    RUNS_DIRNAME,
    average_runs,
    parse_runs,
    run_results,
    run_spread_rows,
)
from nnunet_pde.cli import main as cli_main
from nnunet_pde.commands import LocalExecutor
from nnunet_pde.errors import BenchmarkError
from nnunet_pde.metrics import ImputationPolicy

T1 = "nnUNetTrainerPDE3D_2epochs_4iters"
REF, NEW = "TrainerRef", "TrainerNew"


def test_run_trees_and_run_options(tmp_path: Path) -> None:
    assert run_results(tmp_path, 1) == tmp_path
    assert run_results(tmp_path, 3) == tmp_path / RUNS_DIRNAME / "run_3"
    assert parse_runs() == [1] and parse_runs(3) == [1, 2, 3] and parse_runs(run=2) == [2]
    with pytest.raises(BenchmarkError, match="not both"):
        parse_runs(2, 2)
    with pytest.raises(BenchmarkError, match=">= 1"):
        parse_runs(0)


def test_run_trains_each_run_in_its_own_tree(tmp_path: Path) -> None:
    env = make_nnunet_env(tmp_path, with_gt=False)
    cmd, calls = write_fake_trainer(tmp_path)
    env["FAKE_TRAIN_CALLS"] = str(calls)
    lines: list[str] = []
    out = run_benchmark(
        "987", [T1], LocalExecutor(), folds=[0, 1], train_command=shlex.split(cmd),
        environ=env, print_fn=lines.append, runs=[1, 2],
    )  # fmt: skip
    assert out.ok and len(out.succeeded) == 4
    assert sorted(out.succeeded) == sorted(
        [f"{T1}/fold_0", f"{T1}/fold_1", f"run_2/{T1}/fold_0", f"run_2/{T1}/fold_1"]
    )
    results = Path(env["nnUNet_results"])
    for root in (results, results / RUNS_DIRNAME / "run_2"):
        for k in (0, 1):
            fold = root / DATASET / f"{T1}__{PLANS}__{CONF}" / f"fold_{k}"
            assert (fold / "checkpoint_final.pth").is_file(), fold
    # run 1 before run 2 (runs outermost), and the plan line says so
    assert "2 run(s) (1, 2) x 1 trainer(s) x 2 fold(s) = 4 trainings" in lines[0]
    assert [line for line in lines if " train " in line][2].endswith(
        f"fold 0 run 2 (log {results / RUNS_DIRNAME / 'run_2' / DATASET}"
        f"/nnunet_pde_benchmark/logs/{T1}__{PLANS}__{CONF}_fold_0.log)"
    )
    manifest = json.loads(out.manifest.read_text())
    assert manifest["runs"] == [1, 2]
    assert sorted((j["run"], j["fold"]) for j in manifest["jobs"]) == [
        (1, 0),
        (1, 1),
        (2, 0),
        (2, 1),
    ]
    # --run 2 alone: already finished, nothing runs
    again = run_benchmark(
        "987", [T1], LocalExecutor(), folds=[0, 1], train_command=shlex.split(cmd),
        environ=env, print_fn=lines.append, runs=[2],
    )  # fmt: skip
    assert again.ok and len(again.skipped) == 2 and len(read_calls(calls)) == 4


def _dice(p: np.ndarray, r: np.ndarray) -> float:
    return 2 * float((p & r).sum()) / float(p.sum() + r.sum())


def _erode_rows(n: int):
    def predict(i: int, ref: np.ndarray) -> np.ndarray:
        pred = ref.copy()
        pred[2 : 2 + n] = 0  # the organ's first n z slices lost
        return pred

    return predict


def _perfect(i: int, ref: np.ndarray) -> np.ndarray:
    return ref.copy()


def _organ_dice_mean(predict) -> float:
    vals = []
    for i in range(len(CASES)):
        ref = reference_map(i)
        vals.append(_dice(np.isin(predict(i, ref), [1]), np.isin(ref, [1])))
    return float(np.mean(vals))


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory: pytest.TempPathFactory):
    """REF: perfect, 1-slice, 2-slice erosion in runs 1-3; NEW: 3, 3, 4 slices eroded."""
    root = tmp_path_factory.mktemp("runs_tree")
    env = make_nnunet_env(root)
    results = Path(env["nnUNet_results"])
    plan = {
        REF: [_perfect, _erode_rows(1), _erode_rows(2)],
        NEW: [_erode_rows(3)] * 2 + [_erode_rows(4)],
    }
    for t, predictors in plan.items():
        for run, predict in enumerate(predictors, start=1):
            write_fold_predictions(run_results(results, run), t, predict)
    expected = {t: [_organ_dice_mean(p) for p in ps] for t, ps in plan.items()}
    return env, expected


def test_report_pools_the_runs_and_reports_the_spread(three_runs, tmp_path: Path) -> None:
    env, expected = three_runs
    rep = make_report(
        "987", [REF, NEW], folds=[0, 1, 2, 3, 4], output=tmp_path / "out", num_workers=1,
        progress=False, environ=env, print_fn=lambda s: None, n_bootstrap=200, runs=[1, 2, 3],
    )  # fmt: skip
    rows = {(r["trainer"], r["region"], r["metric"]): r for r in rep.runs}
    ref, new = rows[(REF, "organ", "dice")], rows[(NEW, "organ", "dice")]
    assert ref["run_means"] == pytest.approx(expected[REF], abs=1e-12)
    assert new["run_means"] == pytest.approx(expected[NEW], abs=1e-12)
    assert ref["run_sd"] == pytest.approx(np.std(expected[REF], ddof=1), abs=1e-12)
    assert new["run_difference"] == pytest.approx(
        np.mean(expected[NEW]) - np.mean(expected[REF]), abs=1e-12
    )
    se = math.sqrt(np.var(expected[NEW], ddof=1) / 3 + np.var(expected[REF], ddof=1) / 3)
    assert new["run_difference_se"] == pytest.approx(se, abs=1e-12)
    welch = scipy.stats.ttest_ind(expected[NEW], expected[REF], equal_var=False).pvalue
    assert new["p_runs"] == pytest.approx(welch, rel=1e-9)
    assert math.isnan(ref["p_runs"]) and ref["exceeds_spread"] is None
    assert new["exceeds_spread"] is (new["p_runs_holm"] < 0.05)

    # the per-case table: each case's Dice averaged over the three runs
    summary = {(r["trainer"], r["region"], r["metric"]): r for r in rep.summary}
    assert summary[(REF, "organ", "dice")]["mean"] == pytest.approx(np.mean(expected[REF]))
    assert summary[(REF, "organ", "dice")]["n"] == len(CASES)
    assert {r["run"] for r in rep.per_case} == {1, 2, 3}

    with open(rep.output / RUNS_CSV, newline="") as fh:
        csv_rows = list(csv.DictReader(fh))
    assert len(csv_rows) == len(rep.runs)
    md = (rep.output / "tables.md").read_text()
    assert "### Dice: between runs" in md and "Repeated runs" in md
    assert json.loads((rep.output / "report.json").read_text())["runs"]


def test_a_missing_run_is_named(three_runs, tmp_path: Path) -> None:
    env, _ = three_runs
    with pytest.raises(BenchmarkError, match="no validation predictions.*run_4"):
        make_report(
            "987", [REF], folds=[0, 1, 2, 3, 4], output=tmp_path / "o", num_workers=1,
            progress=False, environ=env, print_fn=lambda s: None, n_bootstrap=50, runs=[1, 4],
        )  # fmt: skip


def test_average_runs_imputes_each_run_before_averaging() -> None:
    policy = ImputationPolicy("worst", 100.0)
    base = {"trainer": "T", "fold": 0, "case": "c", "region": "R", "image_diagonal_mm": 50.0}
    rows = [
        {**base, "run": 1, "dice": 0.0, "hd95_mm": math.inf},
        {**base, "run": 2, "dice": 0.5, "hd95_mm": 4.0},
        {**base, "run": 3, "dice": math.nan, "hd95_mm": math.nan},
    ]
    (avg,) = average_runs(rows, ["dice", "hd95_mm"], policy)
    assert avg["dice"] == pytest.approx(0.25) and avg["hd95_mm"] == pytest.approx(52.0)
    assert avg["n_runs"] == 3 and "run" not in avg
    spread = run_spread_rows(rows, ["T"], "T", ["hd95_mm"], policy)
    assert spread[0]["run_means"] == pytest.approx([100.0, 4.0])


def test_cli_report_prints_the_between_run_table(three_runs, tmp_path: Path, capsys) -> None:
    env, _ = three_runs
    import os

    old = dict(os.environ)
    os.environ.update(env)
    try:
        code = cli_main(
            ["benchmark", "report", "987", "--trainers", REF, NEW, "--runs", "3",
             "--output", str(tmp_path / "cli"), "--bootstrap", "100", "--workers", "1",
             "--no-progress"]
        )  # fmt: skip
    finally:
        os.environ.clear()
        os.environ.update(old)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "Dice over repeated runs" in out and "mean ± between-run SD" in out
    assert RUNS_CSV in out
