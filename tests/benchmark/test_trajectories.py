"""The PDE blocks' per-epoch state across runs, as ``benchmark report`` collects and plots it
(nnunet_pde/benchmark/trajectories.py): read from the checkpoints nnU-Net writes."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
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
    TRAJECTORIES_CSV,
    TRAJECTORIES_PNG,
    read_trajectories,
    trajectories_png,
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

    rows = read_trajectories(
        {1: results, 2: run_results(results, 2)}, DATASET, [PDE, STOCK], [0, 1], PLANS, CONF
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
    rows = read_trajectories(
        {1: results}, DATASET, [PDE], [0, 1], PLANS, CONF, warn=warnings.append
    )
    assert [r["fold"] for r in rows] == [1]
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
        write_fake_checkpoint(_checkpoint(root, PDE, 0), _logging([0.0, 0.1 * run], [0.5, 0.5]))
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
