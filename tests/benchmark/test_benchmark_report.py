"""``benchmark report`` on a fake results tree with known predictions (no training).

Three trainers on 10 cases in 5 folds: ``TrainerPerfect`` predicts the reference exactly,
``TrainerShift`` shifts the organ by one voxel and misses the lesion of case 3 (an infinite
HD95), ``TrainerErode`` loses the top slice of the organ and has no fold 4. Expected values
are computed here directly from the label maps with numpy and the binary-mask metrics.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
from benchmark_fixtures import (
    CASES,
    CONF,
    DATASET,
    PLANS,
    SPACING,
    make_nnunet_env,
    reference_map,
    write_fold_predictions,
)

from nnunet_pde.benchmark.report import REPORT_FILES, make_report, pool_predictions
from nnunet_pde.benchmark.stats import holm
from nnunet_pde.errors import BenchmarkError
from nnunet_pde.metrics import ImputationPolicy, hd95

PERFECT, SHIFT, ERODE = "TrainerPerfect", "TrainerShift", "TrainerErode"
WORST = 100.0


def predict_perfect(i: int, ref: np.ndarray) -> np.ndarray:
    return ref.copy()


def predict_shift(i: int, ref: np.ndarray) -> np.ndarray:
    pred = np.where(ref == 2, 1, ref)  # lesion first drawn as organ
    pred = np.roll(pred, 1, axis=2)
    if i != 3:  # case 3: lesion missed entirely
        pred[np.roll(ref == 2, 1, axis=2)] = 2
    return pred


def predict_erode(i: int, ref: np.ndarray) -> np.ndarray:
    pred = ref.copy()
    pred[2] = 0  # the organ's first z slice is lost
    return pred


def _dice(p: np.ndarray, r: np.ndarray) -> float:
    return 2 * float((p & r).sum()) / float(p.sum() + r.sum())


def expected_values(predict, region_values, metric: str) -> dict[str, float]:
    out = {}
    for i, c in enumerate(CASES):
        ref = reference_map(i)
        pred = predict(i, ref)
        p, r = np.isin(pred, region_values), np.isin(ref, region_values)
        if metric == "dice":
            out[c] = _dice(p, r)
        else:
            v = hd95(p, r, SPACING)
            out[c] = WORST if math.isinf(v) else v
    return out


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("report_tree")
    env = make_nnunet_env(root)
    res = Path(env["nnUNet_results"])
    write_fold_predictions(res, PERFECT, predict_perfect)
    write_fold_predictions(res, SHIFT, predict_shift)
    write_fold_predictions(res, ERODE, predict_erode, folds=(0, 1, 2, 3))
    return env


def report_options(tree: dict[str, str], output: Path) -> dict:
    """The options of the module's report (five folds, worst-value imputation, seed 7)."""
    return dict(
        folds=[0, 1, 2, 3, 4],
        output=output,
        policy=ImputationPolicy("worst", WORST),
        n_bootstrap=2000,
        seed=7,
        num_workers=1,
        progress=False,
        environ=tree,
        print_fn=lambda s: None,
    )


@pytest.fixture(scope="module")
def report(tree: dict[str, str], tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("report_out")
    return make_report("987", [PERFECT, SHIFT, ERODE], **report_options(tree, out))


def _row(report, trainer: str, region: str, metric: str) -> dict:
    (row,) = [
        r
        for r in report.summary
        if r["trainer"] == trainer and r["region"] == region and r["metric"] == metric
    ]
    return row


def test_pooling_reports_missing_folds(tree: dict[str, str], report) -> None:
    pooling = report.meta["pooling"]
    assert pooling[PERFECT]["n_cases"] == 10 and pooling[PERFECT]["missing_folds"] == {}
    assert pooling[ERODE]["n_cases"] == 8
    assert list(pooling[ERODE]["missing_folds"]) == ["4"]
    assert "no folder" in pooling[ERODE]["missing_folds"]["4"]
    md = (report.output / "tables.md").read_text()
    assert f"**Missing folds** for {ERODE}: fold 4" in md


def test_an_unfinished_fold_is_never_pooled(tmp_path: Path) -> None:
    """A fold whose training stopped during its final validation (predictions there, one of
    them half-written, no summary.json) is excluded and named; its files score nothing."""
    env = make_nnunet_env(tmp_path)
    res = Path(env["nnUNet_results"])
    model = write_fold_predictions(res, PERFECT, predict_perfect)
    fold2 = model / "fold_2"
    (fold2 / "validation" / "summary.json").unlink()
    half = next((fold2 / "validation").glob("*.nii.gz"))
    half.write_bytes(half.read_bytes()[: half.stat().st_size // 2])
    lines: list[str] = []
    rep = make_report(
        "987", [PERFECT], folds=[0, 1, 2, 3, 4], output=tmp_path / "out", num_workers=1,
        progress=False, environ=env, print_fn=lines.append,
    )  # fmt: skip
    info = rep.meta["pooling"][PERFECT]
    assert info["n_cases"] == 8 and list(info["missing_folds"]) == ["2"]
    why = info["missing_folds"]["2"]
    assert "not finished" in why and "2 prediction(s) are left out" in why
    assert any("MISSING folds 2" in line for line in lines)
    dice = _row(rep, PERFECT, "organ", "dice")
    assert dice["n"] == 8 and dice["mean"] == 1.0  # the half-written file is not in the mean
    assert "**Missing folds**" in (rep.output / "tables.md").read_text()


def test_summary_rows_and_values(report) -> None:
    regions = ["organ", "lesion"]
    metrics = ["dice", "hd95_mm", "nsd", "assd_mm"]
    keys = [(r["region"], r["trainer"], r["metric"]) for r in report.summary]
    assert sorted(keys) == sorted(
        (g, t, m) for g in regions for t in (PERFECT, SHIFT, ERODE) for m in metrics
    )
    perfect = _row(report, PERFECT, "organ", "dice")
    assert perfect["mean"] == 1.0 and perfect["sd"] == 0.0 and perfect["n"] == 10
    assert (perfect["ci_low"], perfect["ci_high"]) == (1.0, 1.0)
    assert math.isnan(perfect["p_value"]) and perfect["reference"] == PERFECT

    for region, values in (("organ", [1]), ("lesion", [2])):
        exp = expected_values(predict_shift, values, "dice")
        row = _row(report, SHIFT, region, "dice")
        v = np.array(list(exp.values()))
        assert row["n"] == 10
        assert row["mean"] == pytest.approx(v.mean(), abs=1e-12)
        assert row["sd"] == pytest.approx(v.std(ddof=1), abs=1e-12)
        assert row["ci_low"] <= row["mean"] <= row["ci_high"]

    # organ Dice: region (1) is only label 1 in the reference (the lesion is label 2)
    exp = expected_values(predict_shift, [1, 2], "dice")
    assert exp  # sanity of the helper on a union of labels


def test_hd95_with_worst_value_imputation(report) -> None:
    exp = expected_values(predict_shift, [2], "hd95_mm")
    row = _row(report, SHIFT, "lesion", "hd95_mm")
    assert row["n_inf"] == 1 and row["n_imputed"] == 1 and row["n_excluded"] == 0
    assert row["mean"] == pytest.approx(np.mean(list(exp.values())))
    assert "1 imputed" in (report.output / "tables.md").read_text()


def test_paired_tests_equal_scipy_and_holm(report) -> None:
    ref = expected_values(predict_perfect, [1], "dice")
    shift = expected_values(predict_shift, [1], "dice")
    erode = expected_values(predict_erode, [1], "dice")
    p_shift = scipy.stats.wilcoxon([shift[c] for c in CASES], [ref[c] for c in CASES]).pvalue
    common = CASES[:8]  # erode has no fold 4 (cases 8 and 9)
    p_erode = scipy.stats.wilcoxon([erode[c] for c in common], [ref[c] for c in common]).pvalue
    rs, re_ = _row(report, SHIFT, "organ", "dice"), _row(report, ERODE, "organ", "dice")
    assert rs["p_value"] == pytest.approx(p_shift) and rs["n_paired"] == 10
    assert re_["p_value"] == pytest.approx(p_erode) and re_["n_paired"] == 8
    np.testing.assert_allclose([rs["p_holm"], re_["p_holm"]], holm([p_shift, p_erode]))
    assert rs["mean_difference"] == pytest.approx(
        np.mean([shift[c] - ref[c] for c in CASES]), abs=1e-12
    )


def test_per_fold_means(report) -> None:
    rows = [r for r in report.per_fold if r["region"] == "organ"]
    assert sorted((r["trainer"], r["fold"]) for r in rows) == sorted(
        [(t, k) for t in (PERFECT, SHIFT) for k in range(5)] + [(ERODE, k) for k in range(4)]
    )
    exp = expected_values(predict_shift, [1], "dice")
    fold2 = next(r for r in rows if r["trainer"] == SHIFT and r["fold"] == 2)
    assert fold2["n_cases"] == 2
    assert fold2["dice_mean"] == pytest.approx((exp["case_004"] + exp["case_005"]) / 2)


def test_files_tables_and_html(report) -> None:
    out = report.output
    assert sorted(p.name for p in report.files) == sorted(REPORT_FILES)
    with open(out / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * 3 * 4
    shift = next(
        r
        for r in rows
        if r["trainer"] == SHIFT and r["region"] == "organ" and r["metric"] == "dice"
    )
    assert float(shift["mean"]) == pytest.approx(_row(report, SHIFT, "organ", "dice")["mean"])
    with open(out / "per_case_metrics.csv", newline="") as fh:
        per_case = list(csv.DictReader(fh))
    assert len(per_case) == (10 + 10 + 8) * 2
    assert {r["fold"] for r in per_case if r["trainer"] == ERODE} == {"0", "1", "2", "3"}

    md = (out / "tables.md").read_text()
    assert "## Dice (higher is better)" in md and "## HD95 (mm) (lower is better)" in md
    rs = _row(report, SHIFT, "organ", "dice")
    assert (
        f"| organ | {SHIFT} | 10 | {rs['mean']:.4f} ± {rs['sd']:.4f} | "
        f"[{rs['ci_low']:.4f}, {rs['ci_high']:.4f}] | {rs['mean_difference']:+.4f} |"
    ) in md
    assert f"| organ | {PERFECT} | 10 | 1.0000 ± 0.0000 | [1.0000, 1.0000] | reference |" in md
    assert "## Per-fold means (descriptive)" in md

    tex = (out / "tables.tex").read_text()
    assert tex.count("\\begin{tabular}") == 5 and "\\toprule" in tex
    assert "TrainerShift" in tex and "$\\pm$" in tex and "\\_" not in "TrainerShift"
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2 and "<table>" in html
    assert 'src="http' not in html and "href=" not in html  # self-contained
    for m in ("dice", "hd95_mm"):
        assert (out / f"boxplot_{m}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    meta = json.loads((out / "report.json").read_text())
    assert meta["reference"] == PERFECT and meta["imputation"]["worst_value_mm"] == WORST


def test_refuses_to_overwrite_and_is_deterministic(tree: dict[str, str], report) -> None:
    kwargs = report_options(tree, report.output)
    with pytest.raises(FileExistsError, match="--overwrite"):
        make_report("987", [PERFECT, SHIFT, ERODE], **kwargs)
    before = (report.output / "summary.csv").read_text()
    again = make_report("987", [PERFECT, SHIFT, ERODE], overwrite=True, **kwargs)
    assert (again.output / "summary.csv").read_text() == before
    # The bootstrap of a cell does not depend on the other trainers in the report.
    sub = make_report("987", [PERFECT, SHIFT], **{**kwargs, "output": report.output / "sub"})
    a, b = _row(sub, SHIFT, "lesion", "dice"), _row(report, SHIFT, "lesion", "dice")
    assert (a["ci_low"], a["ci_high"]) == (b["ci_low"], b["ci_high"])


def test_duplicate_case_across_folds_is_an_error(tree: dict[str, str], tmp_path: Path) -> None:
    res = Path(tree["nnUNet_results"])
    model = res / DATASET / f"TrainerDup__{PLANS}__{CONF}"
    shutil.copytree(res / DATASET / f"{PERFECT}__{PLANS}__{CONF}", model)
    shutil.copy(
        model / "fold_0" / "validation" / "case_000.nii.gz", model / "fold_1" / "validation"
    )
    with pytest.raises(BenchmarkError, match=r"case_000 \(folds 0 and 1\)"):
        pool_predictions(res, DATASET, "TrainerDup", PLANS, CONF, [0, 1, 2, 3, 4])
    shutil.rmtree(model)


def test_argument_errors(tree: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(BenchmarkError, match="--reference"):
        make_report("987", [PERFECT], reference=SHIFT, output=tmp_path, environ=tree)
    with pytest.raises(BenchmarkError, match="no validation predictions"):
        make_report("987", ["TrainerNone"], output=tmp_path, environ=tree, progress=False)
    with pytest.raises(BenchmarkError, match="unknown metric"):
        make_report("987", [PERFECT], metrics=["iou"], output=tmp_path, environ=tree)


def test_cli_report(tree: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "cli_report"
    cmd = [
        sys.executable,
        "-m",
        "nnunet_pde.cli",
        "benchmark",
        "report",
        DATASET,
        "--trainers",
        SHIFT,
        PERFECT,
        "--reference",
        PERFECT,
        "--output",
        str(out),
        "--bootstrap",
        "500",
        "--workers",
        "1",
        "--no-progress",
        "--metrics",
        "dice",
        "hd95_mm",
    ]
    proc = subprocess.run(cmd, env=tree, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {len(REPORT_FILES)} files to {out}" in proc.stdout
    assert "(reference)" in proc.stdout
    proc = subprocess.run(cmd, env=tree, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--overwrite" in proc.stderr
    proc = subprocess.run(
        [*cmd, "--overwrite", "--impute", "worst"], env=tree, capture_output=True, text=True
    )
    assert proc.returncode == 2 and "--worst-value" in proc.stderr
