"""Fold records: ``benchmark export`` keeps what a finished fold contributes to a report
(per-case metrics, nnU-Net's logger), and ``benchmark report --records`` rebuilds the same
report from them alone, after the results tree is gone.

The reference for every check is the report computed from the results tree itself.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from benchmark_fixtures import (
    CASES,
    CONF,
    DATASET,
    PLANS,
    make_nnunet_env,
    splits,
    write_fake_checkpoint,
    write_fold_predictions,
)

from nnunet_pde.benchmark.records import (
    RECORD_JSON,
    export_records,
    load_records,
    record_dir,
)
from nnunet_pde.benchmark.report import make_report
from nnunet_pde.benchmark.runs import run_results
from nnunet_pde.cli import main as cli_main
from nnunet_pde.errors import BenchmarkError
from nnunet_pde.metrics.per_case_csv import PER_CASE_CSV

REF, NEW = "TrainerRef", "TrainerNew"
FOLDS = [0, 1, 2, 3, 4]


def _erode(n: int):
    def predict(i: int, ref: np.ndarray) -> np.ndarray:
        pred = ref.copy()
        pred[2 : 2 + n] = 0
        return pred

    return predict


def _drop_label_2(i: int, ref: np.ndarray) -> np.ndarray:
    pred = ref.copy()
    if i % 3 == 0:  # some cases lose a whole label: infinite distances to impute
        pred[pred == 2] = 0
    return pred


def _logging(run: int, fold: int) -> dict:
    """An nnU-Net logger with curves and one block's series, different per run and fold,
    with a NaN (as nnU-Net logs before the first validation)."""
    base = 0.1 * run + 0.01 * fold
    return {
        "train_losses": [np.float64(-base), -base - 0.1, -base - 0.2],
        "val_losses": [-base, -base - 0.05, -base - 0.1],
        "mean_fg_dice": [np.float32(0.5 + base), 0.6 + base, float("nan")],
        "ema_fg_dice": [0.5 + base, 0.55 + base, 0.6 + base],
        "pde_stage2_gamma_abs_mean": [0.01 * run, 0.02 * run, 0.03 * run],
        "pde_stage2_gamma_abs_max": [0.02, 0.04, 0.06],
        "pde_stage2_tau": [0.5, 0.55, 0.6 + 0.01 * fold],
        "pde_stage2_contribution": [0.001, 0.01, 0.1],
    }


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory):
    """Two trainers x 2 runs x 5 folds with predictions and checkpoints carrying a logger."""
    root = tmp_path_factory.mktemp("records_tree")
    env = make_nnunet_env(root)
    results = Path(env["nnUNet_results"])
    plan = {REF: [_erode(0), _drop_label_2], NEW: [_erode(1), _erode(2)]}
    for t, predictors in plan.items():
        for run, predict in enumerate(predictors, start=1):
            model = write_fold_predictions(run_results(results, run), t, predict)
            for k in FOLDS:
                write_fake_checkpoint(
                    model / f"fold_{k}" / "checkpoint_final.pth", _logging(run, k)
                )
    return env


def _quiet(**kw):
    return dict(num_workers=1, progress=False, print_fn=lambda s: None, folds=FOLDS, **kw)


def _export(env, out: Path, runs=(1, 2), **kw):
    return export_records(DATASET, [REF, NEW], out, runs=runs, environ=env, **_quiet(**kw))


def _strip(rows):
    """Rows as sorted JSON strings (NaN and inf included), to compare two row lists."""
    return sorted(json.dumps(r, sort_keys=True, default=str) for r in rows)


def test_the_report_from_records_equals_the_report_from_the_tree(tree, tmp_path: Path) -> None:
    records = tmp_path / "records"
    exported = _export(tree, records)
    assert len(exported.written) == 2 * 2 * 5 and not exported.skipped
    folder = record_dir(records, REF, PLANS, CONF, 2, 3)
    rec = json.loads((folder / RECORD_JSON).read_text())
    assert rec["trainer"] == REF and rec["run"] == 2 and rec["fold"] == 3
    assert rec["cases"] == sorted(splits()[3]["val"]) and rec["dataset"] == DATASET
    # no image, no weight: only the two small files
    assert sorted(p.name for p in folder.iterdir()) == [PER_CASE_CSV, RECORD_JSON]

    kw = _quiet(n_bootstrap=200, runs=[1, 2])
    from_tree = make_report(DATASET, [REF, NEW], output=tmp_path / "a", environ=tree, **kw)
    # no nnU-Net folder at all: the records are all the report needs
    bare = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    from_rec = make_report(
        DATASET, [REF, NEW], output=tmp_path / "b", environ=bare, records=records, **kw
    )
    assert _strip(from_rec.per_case) == _strip(from_tree.per_case)
    assert _strip(from_rec.summary) == _strip(from_tree.summary)
    assert _strip(from_rec.runs) == _strip(from_tree.runs)
    assert from_rec.meta["records"] == str(records)
    for name in ("training_curves.csv", "block_trajectories.csv", "tables.md"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text(), name
    # the NaN of the logger came back as NaN (the curves CSV equal above), the infinite
    # distances of the dropped label came back as inf
    assert any(math.isinf(r["hd95_mm"]) for r in from_rec.per_case)


def test_one_run_from_records_has_no_run_column(tree, tmp_path: Path) -> None:
    records = tmp_path / "records"
    _export(tree, records, runs=(1,))
    rep = make_report(
        DATASET, [REF, NEW], output=tmp_path / "o", environ=tree, records=records,
        **_quiet(n_bootstrap=100),
    )  # fmt: skip
    ref = make_report(
        DATASET, [REF, NEW], output=tmp_path / "t", environ=tree, **_quiet(n_bootstrap=100)
    )
    assert "run" not in rep.per_case[0] and rep.runs is None
    assert _strip(rep.summary) == _strip(ref.summary)


def test_export_keeps_current_records_rewrites_changed_ones_and_lists_unfinished(
    tmp_path: Path,
) -> None:
    env = make_nnunet_env(tmp_path / "nn")
    results = Path(env["nnUNet_results"])
    model = write_fold_predictions(results, REF, _erode(1), folds=[0, 1])
    (model / "fold_1" / "validation" / "summary.json").unlink()  # final validation cut off
    records = tmp_path / "records"
    args = dict(environ=env, **{**_quiet(), "folds": [0, 1]})
    first = export_records(DATASET, [REF], records, **args)
    assert [p.name for p in first.written] == ["fold_0"]
    assert len(first.skipped) == 1 and "fold 1" in first.skipped[0]
    assert "not finished" in first.skipped[0]
    assert not record_dir(records, REF, PLANS, CONF, 1, 1).exists()

    again = export_records(DATASET, [REF], records, **args)
    assert again.written == [] and [p.name for p in again.kept] == ["fold_0"]

    # fold 0 retrained (a new checkpoint, worse predictions): its record is rewritten
    write_fold_predictions(results, REF, _erode(3), folds=[0])
    ckpt = model / "fold_0" / "checkpoint_final.pth"
    write_fake_checkpoint(ckpt, {"mean_fg_dice": [0.1, 0.2]})
    os.utime(ckpt, ns=(1, 1))
    third = export_records(DATASET, [REF], records, **args)
    assert [p.name for p in third.written] == ["fold_0"]
    rec = json.loads((record_dir(records, REF, PLANS, CONF, 1, 0) / RECORD_JSON).read_text())
    assert rec["logging"] == {"mean_fg_dice": [0.1, 0.2]}
    loaded = load_records(records, DATASET, [REF], [0, 1], [1], PLANS, CONF, 1.0, lambda s: None)
    dice = [r["dice"] for r in loaded.per_case if r["region"] == "organ"]
    assert max(dice) < 1.0  # the eroded predictions of the retrained fold
    assert loaded.pooled[1][REF].missing_folds.keys() == {1}

    # --overwrite rewrites a current record too
    forced = export_records(DATASET, [REF], records, overwrite=True, **args)
    assert [p.name for p in forced.written] == ["fold_0"]


def test_a_record_whose_csv_is_missing_is_rewritten(tmp_path: Path) -> None:
    env = make_nnunet_env(tmp_path / "nn")
    write_fold_predictions(Path(env["nnUNet_results"]), REF, _erode(0), folds=[0])
    records = tmp_path / "records"
    args = dict(environ=env, **{**_quiet(), "folds": [0]})
    export_records(DATASET, [REF], records, **args)
    (record_dir(records, REF, PLANS, CONF, 1, 0) / PER_CASE_CSV).unlink()
    assert len(export_records(DATASET, [REF], records, **args).written) == 1


@pytest.mark.parametrize(
    "change, message",
    [
        ({"tolerance_mm": 2.0}, r"NSD tolerance of 1.0 mm.*--tolerance-mm 1.0"),
        ({"dataset": "Dataset555_Other"}, r"record of Dataset987_.*not of dataset"),
        ({"trainers": ["TrainerOther"]}, r"TrainerOther: no record of run 1.*benchmark export"),
        ({"runs": [1, 3]}, r"no record of run 3"),
        ({"records": "missing"}, r"is not a folder"),
        ({"break_csv": True}, r"does not read as per-case metrics"),
    ],
)
def test_bad_records_are_clear_errors(tree, tmp_path: Path, change: dict, message: str) -> None:
    records = tmp_path / "records"
    _export(tree, records, runs=(1, 2))
    if change.get("break_csv"):
        csv = record_dir(records, REF, PLANS, CONF, 1, 0) / PER_CASE_CSV
        csv.write_text(csv.read_text().replace("organ", "organ,extra", 1).replace(",", ";", 3))
    where = records if change.get("records") is None else tmp_path / change["records"]
    with pytest.raises(BenchmarkError, match=message):
        make_report(
            change.get("dataset", DATASET), change.get("trainers", [REF, NEW]),
            output=tmp_path / "o", environ=tree, records=where,
            **_quiet(n_bootstrap=50, runs=change.get("runs", [1]),
                     tolerance_mm=change.get("tolerance_mm", 1.0)),
        )  # fmt: skip
    assert not (tmp_path / "o").exists()


def test_a_missing_fold_record_is_named_and_left_out(tree, tmp_path: Path) -> None:
    records = tmp_path / "records"
    _export(tree, records, runs=(1,))
    shutil.rmtree(record_dir(records, NEW, PLANS, CONF, 1, 4))
    lines: list[str] = []
    rep = make_report(
        DATASET, [REF, NEW], output=tmp_path / "o", environ=tree, records=records,
        **{**_quiet(n_bootstrap=50), "print_fn": lines.append},
    )  # fmt: skip
    assert any(NEW in line and "MISSING folds 4" in line for line in lines)
    n_new = {r["case"] for r in rep.per_case if r["trainer"] == NEW}
    assert len(n_new) == len(CASES) - len(splits()[4]["val"])


@pytest.mark.parametrize("lost", [PER_CASE_CSV, RECORD_JSON])
def test_a_half_written_record_is_named_with_its_missing_file(
    tree, tmp_path: Path, lost: str
) -> None:
    records = tmp_path / "records"
    _export(tree, records, runs=(1,))
    # one fold of NEW half-written: reported as incomplete (not as absent) and left out
    (record_dir(records, NEW, PLANS, CONF, 1, 4) / lost).unlink()
    make_report(
        DATASET, [REF, NEW], output=tmp_path / "o", environ=tree, records=records,
        **_quiet(n_bootstrap=50),
    )  # fmt: skip
    tables = (tmp_path / "o" / "tables.md").read_text()
    assert f"**Missing folds** for {NEW}: fold 4: incomplete record in " in tables
    assert f"{lost} missing" in tables
    # every fold of REF half-written: the error names the missing file of each
    for k in FOLDS:
        (record_dir(records, REF, PLANS, CONF, 1, k) / lost).unlink()
    with pytest.raises(BenchmarkError, match=r"TrainerRef: no record of run 1") as err:
        make_report(
            DATASET, [REF, NEW], output=tmp_path / "o2", environ=tree, records=records,
            **_quiet(n_bootstrap=50),
        )  # fmt: skip
    assert str(err.value).count("incomplete record in ") == len(FOLDS)
    assert f"{lost} missing" in str(err.value) and "benchmark export" in str(err.value)


def test_cli_export_then_report_from_records(tree, tmp_path: Path, monkeypatch, capsys) -> None:
    for k, v in tree.items():
        monkeypatch.setenv(k, v)
    records = tmp_path / "records"
    grid = ["--trainers", REF, NEW, "--folds", *map(str, FOLDS)]
    common = ["-j", "1", "--no-progress"]
    assert cli_main(["benchmark", "export", "987", *grid, "--runs", "2",
                     "--output", str(records), *common]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "20 record(s) written, 0 up to date, 0 fold(s) not finished" in out
    assert cli_main(["benchmark", "export", "987", *grid, "--run", "2",
                     "--output", str(records), *common]) == 0  # fmt: skip
    assert "0 record(s) written, 10 up to date" in capsys.readouterr().out
    for k in tree:
        if k.startswith("nnUNet_"):
            monkeypatch.delenv(k)
    assert cli_main(["benchmark", "report", "987", *grid, "--runs", "2", "--records",
                     str(records), "--bootstrap", "50", *common]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "Dice (mean" in out and str(records / "report") in out
    assert (records / "report" / "runs.csv").is_file()


def test_run_skips_the_folds_recorded_elsewhere(tmp_path: Path) -> None:
    """``benchmark run --records``: a fold with a record is not trained again, though this
    results tree has nothing of it; the other folds and runs are."""
    from benchmark_fixtures import read_calls, write_fake_trainer

    from nnunet_pde.benchmark.run import run_benchmark
    from nnunet_pde.commands import LocalExecutor

    trainer = "nnUNetTrainerPDE3D_2epochs_4iters"
    # trained and exported on a machine that is gone: only its records are left
    gone = make_nnunet_env(tmp_path / "gone")
    write_fold_predictions(Path(gone["nnUNet_results"]), trainer, _erode(0), folds=[0])
    records = tmp_path / "records"
    export_records(DATASET, [trainer], records, environ=gone, **{**_quiet(), "folds": [0]})

    env = make_nnunet_env(tmp_path / "here", with_gt=False)
    cmd, calls = write_fake_trainer(tmp_path)
    env["FAKE_TRAIN_CALLS"] = str(calls)
    lines: list[str] = []
    kw = dict(folds=[0, 1], train_command=cmd.split(), environ=env, runs=[1, 2])
    dry = run_benchmark(
        "987", [trainer], LocalExecutor(), dry_run=True, print_fn=lines.append,
        records=records, **kw,
    )  # fmt: skip
    assert [t.action for t in dry.tasks] == ["skip", "train", "train", "train"]
    assert dry.tasks[0].recorded == record_dir(records, trainer, PLANS, CONF, 1, 0)
    assert "1 finished (skipped; 1 of them recorded only)" in lines[0]
    assert any(line.startswith(f"# skip {trainer}/fold_0: recorded") for line in lines)

    out = run_benchmark(
        "987", [trainer], LocalExecutor(), print_fn=lines.append, records=records, **kw
    )
    assert out.ok and out.skipped == [f"{trainer}/fold_0"]
    trained = sorted((c[2], c[c.index("-tr") + 1]) for c in read_calls(calls))
    assert trained == [("0", trainer), ("1", trainer), ("1", trainer)]  # run 2 fold 0 too
    # without --records the recorded fold trains like any other
    plain = run_benchmark("987", [trainer], LocalExecutor(), dry_run=True,
                          print_fn=lines.append, **{**kw, "runs": [1]})  # fmt: skip
    assert [t.action for t in plain.tasks] == ["train", "skip"]
