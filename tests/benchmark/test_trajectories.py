"""The per-epoch series of every training, as ``benchmark report`` collects and plots them
(nnunet_pde/benchmark/trajectories.py): the PDE blocks' state and nnU-Net's training curves,
read from the checkpoints nnU-Net writes."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
from benchmark_fixtures import (
    CONF,
    DATASET,
    PLANS,
    make_nnunet_env,
    reference_map,
    write_fake_checkpoint,
    write_fold_predictions,
)

from nnunet_pde.benchmark.report import make_report
from nnunet_pde.benchmark.runs import run_results
from nnunet_pde.benchmark.trajectories import (
    CURVES_CSV,
    CURVES_PNG,
    TRAJECTORIES_CSV,
    TRAJECTORIES_PNG,
    FoldLog,
    curve_rows,
    curves_png,
    plateau_rows,
    read_logs,
    trajectories_png,
    trajectory_rows,
)

PDE, STOCK = "nnUNetTrainerPDE3D_X", "nnUNetTrainerPDE3D_Backbone_X"


def _logging(gate: list[float], tau: list[float], with_stage0: bool = False) -> dict:
    """An nnU-Net logger dict with the block keys of stage3 (and stage0), besides the
    usual entries, numpy scalars included as nnU-Net logs them."""
    logging = {
        "train_losses": [np.float32(1.0)] * len(gate),
        "pde_stage3_gamma_abs_mean": [np.float64(g) for g in gate],
        "pde_stage3_gamma_abs_max": [2 * g for g in gate],
        "pde_stage3_tau": tau,
        "pde_stage3_contribution": [g / 10 for g in gate],
    }
    if with_stage0:
        logging["pde_stage0_tau"] = [0.25] * len(gate)
    return logging


def _checkpoint(results: Path, trainer: str, fold: int) -> Path:
    return (
        results / DATASET / f"{trainer}__{PLANS}__{CONF}" / f"fold_{fold}" / "checkpoint_final.pth"
    )


def test_reads_every_finished_fold_of_every_run(tmp_path: Path) -> None:
    results = tmp_path / "res"
    write_fake_checkpoint(_checkpoint(results, PDE, 0), _logging([0.0, 0.1, 0.3], [0.5, 0.6, 0.7]))
    write_fake_checkpoint(
        _checkpoint(run_results(results, 2), PDE, 0),
        _logging([0.0, 0.2], [0.5, 0.4], with_stage0=True),
    )
    write_fake_checkpoint(_checkpoint(results, STOCK, 0), {"train_losses": [1.0, 0.9]})
    # fold 1 of the PDE trainer not finished: only checkpoint_latest
    latest = _checkpoint(results, PDE, 1).with_name("checkpoint_latest.pth")
    write_fake_checkpoint(latest, _logging([9.0], [9.0]))

    rows = trajectory_rows(
        read_logs(
            {1: results, 2: run_results(results, 2)}, DATASET, [PDE, STOCK], [0, 1], PLANS, CONF
        )
    )
    got = [(r["run"], r["fold"], r["block"], r["epoch"]) for r in rows]
    assert got == [
        (1, 0, "stage3", 0), (1, 0, "stage3", 1), (1, 0, "stage3", 2),
        (2, 0, "stage0", 0), (2, 0, "stage0", 1),
        (2, 0, "stage3", 0), (2, 0, "stage3", 1),
    ]  # fmt: skip
    assert {r["trainer"] for r in rows} == {PDE}  # the backbone logged no block
    run1 = [r for r in rows if r["run"] == 1]
    assert [r["gamma_abs_mean"] for r in run1] == pytest.approx([0.0, 0.1, 0.3])
    assert [r["gamma_abs_max"] for r in run1] == pytest.approx([0.0, 0.2, 0.6])
    assert [r["tau"] for r in run1] == pytest.approx([0.5, 0.6, 0.7])
    assert [r["contribution"] for r in run1] == pytest.approx([0.0, 0.01, 0.03])
    stage0 = [r for r in rows if r["block"] == "stage0"]
    assert [r["tau"] for r in stage0] == [0.25, 0.25]
    assert all(math.isnan(r["gamma_abs_mean"]) for r in stage0)  # not logged for that block


def test_an_unreadable_checkpoint_is_named_and_left_out(tmp_path: Path) -> None:
    results = tmp_path / "res"
    bad = _checkpoint(results, PDE, 0)
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a checkpoint")
    write_fake_checkpoint(_checkpoint(results, PDE, 1), _logging([0.1], [0.5]))
    warnings: list[str] = []
    logs = read_logs({1: results}, DATASET, [PDE], [0, 1], PLANS, CONF, warn=warnings.append)
    assert [log.fold for log in logs] == [1]
    assert [r["fold"] for r in trajectory_rows(logs)] == [1]
    assert len(warnings) == 1 and str(bad) in warnings[0] and "left out" in warnings[0]


def test_plot_is_a_png_that_grows_with_the_blocks() -> None:
    base = {"trainer": PDE, "run": 1, "fold": 0, "gamma_abs_mean": 0.1, "gamma_abs_max": 0.2}
    one = [
        {**base, "block": "stage3", "epoch": e, "tau": 0.5, "contribution": 0.01} for e in range(3)
    ]
    two = one + [{**r, "block": "stage0"} for r in one]
    png1, png2 = trajectories_png(one, [PDE, STOCK]), trajectories_png(two, [PDE, STOCK])
    assert png1[:8] == png2[:8] == b"\x89PNG\r\n\x1a\n"
    height = lambda png: int.from_bytes(png[20:24], "big")  # noqa: E731 (IHDR height)
    assert height(png2) > 1.5 * height(png1)  # one row of panels per block


def test_report_writes_the_trajectories_of_the_pde_trainer(tmp_path: Path) -> None:
    env = make_nnunet_env(tmp_path)
    results = Path(env["nnUNet_results"])
    for run in (1, 2):
        root = run_results(results, run)
        for trainer in (STOCK, PDE):
            write_fold_predictions(root, trainer, lambda i, ref: ref, folds=(0, 1, 2, 3, 4))
        write_fake_checkpoint(
            _checkpoint(root, PDE, 0),
            {**_logging([0.0, 0.1 * run], [0.5, 0.5]), **_curves_logging([0.3, 0.3 + run / 10])},
        )
    write_fake_checkpoint(_checkpoint(results, STOCK, 1), _curves_logging([0.1, 0.2, 0.3]))
    assert reference_map(0).any()
    rep = make_report(
        "987", [STOCK, PDE], folds=[0, 1, 2, 3, 4], output=tmp_path / "out", num_workers=1,
        progress=False, environ=env, print_fn=lambda s: None, n_bootstrap=50, runs=[1, 2],
    )  # fmt: skip
    names = {p.name for p in rep.files}
    assert {TRAJECTORIES_CSV, TRAJECTORIES_PNG, "runs_dice.png", "runs_hd95_mm.png"} <= names
    with open(rep.output / TRAJECTORIES_CSV, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["trainer"], r["run"], r["epoch"], r["gamma_abs_mean"]) for r in rows] == [
        (PDE, "1", "0", "0.0"), (PDE, "1", "1", "0.1"),
        (PDE, "2", "0", "0.0"), (PDE, "2", "1", "0.2"),
    ]  # fmt: skip
    html = (rep.output / "report.html").read_text()
    assert "PDE blocks per epoch" in html and "Run-to-run spread: dice" in html

    # nnU-Net's curves of every finished training, the backbone's too, and the plateau table
    assert {CURVES_CSV, CURVES_PNG} <= names and "Training curves" in html
    with open(rep.output / CURVES_CSV, newline="") as fh:
        curves = list(csv.DictReader(fh))
    assert [(r["trainer"], r["run"], r["fold"], r["epoch"]) for r in curves] == [
        (STOCK, "1", "1", "0"), (STOCK, "1", "1", "1"), (STOCK, "1", "1", "2"),
        (PDE, "1", "0", "0"), (PDE, "1", "0", "1"),
        (PDE, "2", "0", "0"), (PDE, "2", "0", "1"),
    ]  # fmt: skip
    assert [float(r["pseudo_dice"]) for r in curves] == pytest.approx(
        [0.1, 0.2, 0.3, 0.3, 0.4, 0.3, 0.5]
    )
    md = (rep.output / "tables.md").read_text()
    assert "did each training reach a plateau?" in md
    assert f"| {STOCK} | 1 | 1 | 3 | 0.129 | 0.129 |" in md  # EMA 0.1, 0.11, 0.129
    plateau = json.loads((rep.output / "report.json").read_text())["plateau"]
    assert [(r["trainer"], r["run"], r["epochs"]) for r in plateau] == [
        (STOCK, 1, 3), (PDE, 1, 2), (PDE, 2, 2)
    ]  # fmt: skip


def _curves_logging(raw: list[float]) -> dict:
    """nnU-Net's logger entries for a pseudo Dice ``raw`` per epoch: its moving average as
    nnUNetLogger forms it (0.9 old + 0.1 new), the losses falling, numpy scalars."""
    ema: list[float] = []
    for v in raw:
        ema.append(v if not ema else 0.9 * ema[-1] + 0.1 * v)
    return {
        "mean_fg_dice": [np.float32(v) for v in raw],
        "ema_fg_dice": [np.float32(v) for v in ema],
        "train_losses": [np.float32(-v) for v in raw],
        "val_losses": [np.float32(-v / 2) for v in raw],
        "dice_per_class_or_region": [[np.float32(v), np.float32(v)] for v in raw],
    }


def test_curves_and_plateau_of_every_training() -> None:
    raw = [0.2, 0.4, 0.6, 0.7, 0.8, 0.8, 0.8, 0.9, 0.8]  # 9 epochs: the late half is the last 5
    logs = [
        FoldLog(PDE, 1, 0, _curves_logging(raw)),
        FoldLog(STOCK, 2, 0, _curves_logging(raw[:5])),
        FoldLog(STOCK, 3, 0, _curves_logging([0.1 * e for e in range(8)])),
    ]
    curves = curve_rows(logs)
    assert [(r["trainer"], r["run"], r["epoch"]) for r in curves] == [
        *((PDE, 1, e) for e in range(9)), *((STOCK, 2, e) for e in range(5)),
        *((STOCK, 3, e) for e in range(8)),
    ]  # fmt: skip
    assert [r["pseudo_dice"] for r in curves[:9]] == pytest.approx(raw)
    assert [r["train_loss"] for r in curves[:9]] == pytest.approx([-v for v in raw])
    assert [r["val_loss"] for r in curves[:9]] == pytest.approx([-v / 2 for v in raw])
    ema = [r["ema_pseudo_dice"] for r in curves[:9]]

    full, short, straight = plateau_rows(curves)
    assert (full["trainer"], full["run"], full["epochs"]) == (PDE, 1, 9)
    assert full["final_ema_pseudo_dice"] == pytest.approx(ema[-1])
    assert full["best_ema_pseudo_dice"] == pytest.approx(max(ema))
    # the late trend against scipy's regression of the last 5 values (4 epochs apart)
    fit = scipy.stats.linregress(range(5), raw[4:])
    assert full["late_rise"] == pytest.approx(4 * fit.slope, abs=1e-6)
    assert full["late_rise_se"] == pytest.approx(4 * fit.stderr, abs=1e-6)
    assert abs(full["late_rise"]) < 2 * full["late_rise_se"]  # flat within its noise
    # five epochs: too short to say
    assert short["epochs"] == 5 and math.isnan(short["late_rise"])
    assert math.isnan(short["late_rise_se"])
    # still rising by 0.1 per epoch: the last 4 epochs rise 0.3, exactly, no error
    assert straight["late_rise"] == pytest.approx(0.3, abs=1e-6)
    assert straight["late_rise_se"] == pytest.approx(0.0, abs=1e-6)


def test_a_log_without_curves_gives_no_curve_rows() -> None:
    assert curve_rows([FoldLog(PDE, 1, 0, {"lrs": [0.01]})]) == []
    # a resumed training whose early epochs lack the EMA: NaN there, not a crash
    rows = curve_rows([FoldLog(PDE, 1, 0, {"mean_fg_dice": [0.5, 0.6], "ema_fg_dice": [0.5]})])
    assert len(rows) == 2 and math.isnan(rows[1]["ema_pseudo_dice"])


def test_curves_plot_is_a_png_with_every_trainer() -> None:
    logs = [FoldLog(t, 1, 0, _curves_logging([0.2, 0.5, 0.6])) for t in (PDE, STOCK)]
    png = curves_png(curve_rows(logs), [STOCK, PDE])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
