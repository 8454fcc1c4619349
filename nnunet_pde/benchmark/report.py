"""``nnunet-pde benchmark report``: the cross-validation results of several trainers as tables,
statistics and figures.

For each trainer, the out-of-fold predictions of the requested folds
(``$nnUNet_results/<dataset>/<trainer>__<plans>__<configuration>/fold_<k>/validation/``) are
pooled, every case exactly once, and evaluated with :mod:`nnunet_pde.metrics` against
``$nnUNet_preprocessed/<dataset>/gt_segmentations`` (the references nnU-Net's own validation
uses) with the labels or regions of ``$nnUNet_preprocessed/<dataset>/dataset.json``.

Statistics, per trainer, region and metric, over cases (see docs/benchmarking.md):

* mean, SD (ddof=1), median over the cases, after the imputation policy for infinite distances
  (:class:`~nnunet_pde.metrics.ImputationPolicy`; ``nan`` = undefined is left out);
* percentile bootstrap 95% CI of the mean, resampling cases (seeded, deterministic);
* paired two-sided Wilcoxon signed-rank test against the reference trainer on the cases both
  have a finite value for, and Holm's correction over the non-reference trainers within each
  (region, metric);
* per-fold means (descriptive only: folds share no cases, so they are not independent
  replicates of the same experiment).

Outputs (all in ``--output``; existing ones are only replaced with ``--overwrite``):
:data:`REPORT_FILES`.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from nnunet_pde.benchmark.manifest import software_versions
from nnunet_pde.benchmark.outcome import WrittenOutcome
from nnunet_pde.benchmark.pooling import (
    PooledPredictions,
    impute_aligned,
    metric_values,
    pool_predictions,
)
from nnunet_pde.benchmark.records import load_records
from nnunet_pde.benchmark.render import (
    boxplot_png,
    render_html,
    render_latex,
    render_markdown,
    runs_png,
)
from nnunet_pde.benchmark.runs import RUN_COLUMNS, average_runs, run_results, run_spread_rows
from nnunet_pde.benchmark.settings import (
    EvaluationSettings,
    OutputFiles,
    dataset_references,
    evaluate_fold_folder,
)
from nnunet_pde.benchmark.stats import bootstrap_ci, holm, paired_wilcoxon
from nnunet_pde.benchmark.trajectories import (
    CURVE_COLUMNS,
    CURVES_CSV,
    CURVES_PNG,
    TRAJECTORIES_CSV,
    TRAJECTORIES_PNG,
    TRAJECTORY_COLUMNS,
    curve_rows,
    curves_png,
    plateau_rows,
    read_logs,
    trajectories_png,
    trajectory_rows,
)
from nnunet_pde.benchmark.writers import STAT_COLUMNS, stat_fields, write_csv
from nnunet_pde.errors import BenchmarkError
from nnunet_pde.files import read_json, write_json
from nnunet_pde.folders import (
    check_trainer_names,
    fold_dir,
    parse_folds,
    read_splits,
    require_env_folder,
    resolve_dataset_name,
)
from nnunet_pde.metrics import ImputationPolicy, aggregate
from nnunet_pde.metrics.aggregate import json_safe
from nnunet_pde.metrics.info import METRIC_INFO

__all__ = [
    "DEFAULT_METRICS",
    "OPTIONAL_FILES",
    "REPORT_FILES",
    "PooledPredictions",
    "ReportOutcome",
    "impute_aligned",
    "make_report",
    "pool_predictions",
]

#: Metrics in the tables, in order (all of :data:`nnunet_pde.metrics.SUMMARY_METRICS` work).
DEFAULT_METRICS = ("dice", "hd95_mm", "nsd", "assd_mm")

#: Metrics with a box plot.
BOXPLOT_METRICS = ("dice", "hd95_mm")

PER_CASE_CSV = "per_case_metrics.csv"
SUMMARY_CSV = "summary.csv"
PER_FOLD_CSV = "per_fold.csv"
TABLES_MD = "tables.md"
TABLES_TEX = "tables.tex"
REPORT_HTML = "report.html"
REPORT_JSON = "report.json"
RUNS_CSV = "runs.csv"

#: Written only with repeated runs: the run means and their spread, per box-plot metric.
RUNS_PNGS = tuple(f"runs_{m}.png" for m in BOXPLOT_METRICS)

#: Files written only when they apply: repeated runs (:data:`RUNS_CSV`, :data:`RUNS_PNGS`),
#: trainers with PDE blocks (the block trajectories), finished trainings whose checkpoints
#: hold nnU-Net's logger (the training curves).
OPTIONAL_FILES = (
    RUNS_CSV, *RUNS_PNGS, TRAJECTORIES_CSV, TRAJECTORIES_PNG, CURVES_CSV, CURVES_PNG
)  # fmt: skip

#: Every file the report writes (and, where they apply, :data:`OPTIONAL_FILES`).
REPORT_FILES = (
    PER_CASE_CSV,
    SUMMARY_CSV,
    PER_FOLD_CSV,
    TABLES_MD,
    TABLES_TEX,
    *(f"boxplot_{m}.png" for m in BOXPLOT_METRICS),
    REPORT_HTML,
    REPORT_JSON,
)

#: Default output folder name inside ``$nnUNet_results/<dataset>``.
REPORT_DIRNAME = "nnunet_pde_report"


# -------------------------------------------------------------------------- statistics


def _cell_seed(seed: int, *parts: str) -> int:
    # A seed per table cell that does not depend on which other trainers are in the report.
    return (seed * 1_000_003 + zlib.crc32("\x1f".join(parts).encode())) % (2**32)


def compute_statistics(
    rows: Sequence[Mapping[str, Any]],
    trainers: Sequence[str],
    reference: str,
    metrics: Sequence[str],
    policy: ImputationPolicy,
    n_bootstrap: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Summary rows (trainer x region x metric) and per-fold rows from per-case rows.

    Parameters
    ----------
    rows
        Per-case rows of :func:`nnunet_pde.metrics.evaluate.evaluate_folders` with the extra
        keys ``trainer`` and ``fold``.
    trainers, reference
        Trainers in report order; the reference of the paired tests (one of ``trainers``).
    metrics, policy
        What to summarise, and the imputation of infinite distances.
    n_bootstrap, seed, confidence
        Bootstrap settings.

    Returns
    -------
    (summary, per_fold)
        ``summary``: one dict per (region, trainer, metric) with ``n_cases``, ``n``,
        ``n_nan``, ``n_inf``, ``n_imputed``, ``n_excluded``, ``mean``, ``sd``, ``median``,
        ``ci_low``, ``ci_high``, and against the reference ``n_paired``,
        ``mean_difference`` (trainer minus reference), ``wilcoxon_statistic``, ``p_value``,
        ``p_holm`` (``nan`` for the reference itself). ``per_fold``: one dict per
        (region, trainer, fold, metric) with ``n`` and ``mean``.
    """
    regions, by_tr, aligned, folds_of = _align(rows, trainers, metrics, policy)
    summary: list[dict[str, Any]] = []
    for region in regions:
        for m in metrics:
            block = []
            for t in trainers:
                rr = [r for r in by_tr[t] if r["region"] == region]
                if not rr:
                    continue
                agg = aggregate(rr, policy, metrics=(m,))["regions"][region]
                values = np.fromiter(aligned[(t, region, m)].values(), dtype=np.float64)
                lo, hi = bootstrap_ci(
                    values, n_bootstrap, confidence, _cell_seed(seed, t, region, m)
                )
                row: dict[str, Any] = {
                    "region": region,
                    "labels": agg["labels"],
                    "trainer": t,
                    "metric": m,
                    **stat_fields(agg["metrics"][m]),
                    "ci_low": lo,
                    "ci_high": hi,
                    "reference": reference,
                    "n_paired": 0,
                    "mean_difference": float("nan"),
                    "wilcoxon_statistic": float("nan"),
                    "p_value": float("nan"),
                    "p_holm": float("nan"),
                }
                if t != reference and (reference, region, m) in aligned:
                    row.update(
                        _paired_test(aligned[(t, region, m)], aligned[(reference, region, m)])
                    )
                block.append(row)
            adjusted = holm([r["p_value"] for r in block])
            for r, p in zip(block, adjusted, strict=True):
                r["p_holm"] = float(p)
            summary.extend(block)
    return summary, _per_fold_rows(regions, trainers, metrics, aligned, folds_of)


_Aligned = dict[tuple[str, str, str], dict[str, float]]


def _align(
    rows: Sequence[Mapping[str, Any]],
    trainers: Sequence[str],
    metrics: Sequence[str],
    policy: ImputationPolicy,
) -> tuple[
    list[str], dict[str, list[Mapping[str, Any]]], _Aligned, dict[tuple[str, str], dict[str, int]]
]:
    """Regions in order of appearance, the rows per trainer, the per-case values per
    (trainer, region, metric) with distances imputed, and each case's fold per
    (trainer, region)."""
    regions: list[str] = []
    for r in rows:
        if r["region"] not in regions:
            regions.append(str(r["region"]))
    by_tr: dict[str, list[Mapping[str, Any]]] = {t: [] for t in trainers}
    for r in rows:
        by_tr[str(r["trainer"])].append(r)
    aligned: _Aligned = {}
    folds_of: dict[tuple[str, str], dict[str, int]] = {}
    for t in trainers:
        for region in regions:
            rr = [r for r in by_tr[t] if r["region"] == region]
            folds_of[(t, region)] = {str(r["case"]): int(r["fold"]) for r in rr}
            for m in metrics:
                vals = metric_values(rr, m, policy).tolist()
                aligned[(t, region, m)] = {str(r["case"]): v for r, v in zip(rr, vals, strict=True)}
    return regions, by_tr, aligned, folds_of


def _paired_test(mine: Mapping[str, float], ref_vals: Mapping[str, float]) -> dict[str, Any]:
    """The paired Wilcoxon test of a trainer against the reference on their common cases."""
    common = sorted(set(ref_vals) & set(mine))
    test = paired_wilcoxon([mine[c] for c in common], [ref_vals[c] for c in common])
    return {
        "n_paired": test.n,
        "mean_difference": test.mean_difference,
        "wilcoxon_statistic": test.statistic,
        "p_value": test.pvalue,
    }


def _per_fold_rows(
    regions: Sequence[str],
    trainers: Sequence[str],
    metrics: Sequence[str],
    aligned: _Aligned,
    folds_of: Mapping[tuple[str, str], Mapping[str, int]],
) -> list[dict[str, Any]]:
    """Per (region, trainer, fold): the number of cases and each metric's n and mean."""
    per_fold: list[dict[str, Any]] = []
    for region in regions:
        for t in trainers:
            fmap = folds_of.get((t, region), {})
            for k in sorted(set(fmap.values())):
                cases = [c for c, f in fmap.items() if f == k]
                entry: dict[str, Any] = {"region": region, "trainer": t, "fold": k}
                for m in metrics:
                    v = np.asarray([aligned[(t, region, m)][c] for c in cases], dtype=np.float64)
                    v = v[np.isfinite(v)]
                    entry[f"{m}_n"] = int(v.size)
                    entry[f"{m}_mean"] = float(v.mean()) if v.size else float("nan")
                entry["n_cases"] = len(cases)
                per_fold.append(entry)
    return per_fold


# ------------------------------------------------------------------------------ driver


@dataclass(kw_only=True)
class ReportOutcome(WrittenOutcome):
    """What ``benchmark report`` produced: :class:`WrittenOutcome` (``summary.csv``,
    ``per_case_metrics.csv``, ``report.json``), the rows of ``per_fold.csv``, and those of
    ``runs.csv`` (None for a single run)."""

    per_fold: list[dict[str, Any]]
    runs: list[dict[str, Any]] | None = None


SUMMARY_COLUMNS = (
    "region",
    "labels",
    "trainer",
    "metric",
    *STAT_COLUMNS,
    "ci_low",
    "ci_high",
    "reference",
    "n_paired",
    "mean_difference",
    "wilcoxon_statistic",
    "p_value",
    "p_holm",
)


def _refuse_existing_report(out: Path, overwrite: bool) -> None:
    if not overwrite:
        existing = [str(out / f) for f in (*REPORT_FILES, *OPTIONAL_FILES) if (out / f).exists()]
        if existing:
            raise FileExistsError(
                f"report files exist in {out}: {', '.join(Path(e).name for e in existing)}; "
                "pass --overwrite to replace them, or --output DIR"
            )


def _pool_trainers(
    results: Path,
    name: str,
    trainers: Sequence[str],
    fold_list: list[int],
    file_ending: str,
    splits: Any,
    settings: EvaluationSettings,
) -> dict[str, PooledPredictions]:
    """The pooled out-of-fold predictions of every trainer, one progress line each."""
    pooled: dict[str, PooledPredictions] = {}
    for t in trainers:
        p = pool_predictions(
            results, name, t, settings.plans, settings.configuration, fold_list, file_ending, splits
        )
        if not p.cases:
            raise BenchmarkError(
                f"{t}: no validation predictions in {p.model_folder}/fold_*/validation for folds "
                f"{', '.join(map(str, fold_list))}; train them first (nnunet-pde benchmark run)"
            )
        pooled[t] = p
        line = f"{t}: {len(p.cases)} cases from folds {', '.join(map(str, p.folds_found))}"
        if p.missing_folds:
            line += f"; MISSING folds {', '.join(map(str, p.missing_folds))}"
        n_missing_cases = sum(len(v) for v in p.missing_cases.values())
        if n_missing_cases:
            line += f"; {n_missing_cases} validation case(s) without prediction"
        settings.print_fn(line)
    return pooled


def _evaluate_pooled(
    results: Path,
    name: str,
    pooled: Mapping[str, PooledPredictions],
    gt: Path,
    ds_json: Path,
    settings: EvaluationSettings,
) -> list[dict[str, Any]]:
    """Per-case rows of every trainer's pooled validation folders, with trainer and fold."""
    per_case: list[dict[str, Any]] = []
    for t, p in pooled.items():
        for k in p.folds_found:
            val = fold_dir(results, name, t, settings.plans, settings.configuration, k)
            val = val / "validation"
            settings.print_fn(f"evaluating {t} fold {k} ({val})")
            rows = evaluate_fold_folder(val, gt, ds_json, settings)
            per_case.extend({"trainer": t, "fold": k, **r} for r in rows)
    return per_case


def _write_report(
    out: Path,
    per_case: list[dict[str, Any]],
    summary: list[dict[str, Any]],
    per_fold: list[dict[str, Any]],
    metrics: Sequence[str],
    meta: dict[str, Any],
    policy: ImputationPolicy,
    runs: list[dict[str, Any]] | None = None,
    trajectories: list[dict[str, Any]] | None = None,
    curves: list[dict[str, Any]] | None = None,
) -> list[Path]:
    """Write :data:`REPORT_FILES` (and those of :data:`OPTIONAL_FILES` that apply) into
    ``out``; the files, in order."""
    from nnunet_pde.metrics.evaluate import CSV_COLUMNS

    out.mkdir(parents=True, exist_ok=True)
    files = OutputFiles(out)
    case_cols = ("trainer", "fold", *(("run",) if runs else ()), *CSV_COLUMNS)
    files.put(PER_CASE_CSV, lambda p: write_csv(p, per_case, case_cols))
    files.put(SUMMARY_CSV, lambda p: write_csv(p, summary, SUMMARY_COLUMNS))
    fold_cols = ["region", "trainer", "fold", "n_cases"]
    for m in metrics:
        fold_cols += [f"{m}_n", f"{m}_mean"]
    files.put(PER_FOLD_CSV, lambda p: write_csv(p, per_fold, fold_cols))
    plateau = plateau_rows(curves) if curves else None
    files.put_text(TABLES_MD, render_markdown(summary, per_fold, metrics, meta, runs, plateau))
    if runs:
        files.put(
            RUNS_CSV,
            lambda p: write_csv(
                p, [{**r, "run_means": " ".join(map(str, r["run_means"]))} for r in runs],
                RUN_COLUMNS,
            ),
        )  # fmt: skip
    files.put_text(TABLES_TEX, render_latex(summary, per_fold, metrics, meta))
    trainers = meta["trainers"]
    images = {m: boxplot_png(per_case, trainers, m, policy) for m in BOXPLOT_METRICS}
    for m, png in images.items():
        files.put_bytes(f"boxplot_{m}.png", png)
    figures: dict[str, bytes] = {}
    if runs:
        for m in BOXPLOT_METRICS:
            png = runs_png(runs, trainers, m)
            files.put_bytes(f"runs_{m}.png", png)
            figures[f"Run-to-run spread: {m}"] = png
    if trajectories:
        files.put(TRAJECTORIES_CSV, lambda p: write_csv(p, trajectories, TRAJECTORY_COLUMNS))
        png = trajectories_png(trajectories, trainers)
        files.put_bytes(TRAJECTORIES_PNG, png)
        figures["PDE blocks per epoch"] = png
    if curves:
        files.put(CURVES_CSV, lambda p: write_csv(p, curves, CURVE_COLUMNS))
        png = curves_png(curves, trainers)
        files.put_bytes(CURVES_PNG, png)
        figures["Training curves"] = png
    files.put_text(
        REPORT_HTML, render_html(summary, per_fold, metrics, meta, images, figures, plateau)
    )
    files.put(
        REPORT_JSON,
        lambda p: write_json(
            p,
            json_safe(
                {**meta, "summary": summary, "per_fold": per_fold, "runs": runs, "plateau": plateau}
            ),  # fmt: skip
            allow_nan=False,
        ),
    )
    return files.written


def _report_meta(
    name: str,
    trainers: Sequence[str],
    reference: str,
    fold_list: list[int],
    metrics: Sequence[str],
    settings: EvaluationSettings,
) -> dict[str, Any]:
    """The run's settings as ``report.json`` starts them (the statistics' settings follow)."""
    return {
        "kind": "nnunet_pde benchmark report",
        "dataset": name,
        "configuration": settings.configuration,
        "plans": settings.plans,
        "trainers": list(trainers),
        "reference": reference,
        "folds": fold_list,
        "metrics": list(metrics),
        "tolerance_mm": float(settings.tolerance_mm),
        "imputation": settings.imputation.as_dict(),
    }


def _evaluate_results_tree(
    dataset: str | int,
    trainers: Sequence[str],
    fold_list: list[int],
    runs: list[int],
    settings: EvaluationSettings,
) -> tuple[str, Path, list[dict[str, Any]], dict[str, PooledPredictions], list[Any], dict]:
    """Pool and evaluate the validation predictions of every run's results tree: the
    dataset name, output folder, per-case rows, pooling, training logs and sources."""
    env = settings.env
    results = require_env_folder("nnUNet_results", env)
    preprocessed = require_env_folder("nnUNet_preprocessed", env)
    name = resolve_dataset_name(dataset, env)
    pre = preprocessed / name
    gt, ds_json = dataset_references(pre)
    file_ending = str(read_json(ds_json, BenchmarkError).get("file_ending", ".nii.gz"))
    out = settings.output_folder(results / name / REPORT_DIRNAME)
    _refuse_existing_report(out, settings.overwrite)

    pooled: dict[str, PooledPredictions] = {}
    per_case: list[dict[str, Any]] = []
    for run in runs:
        root = run_results(results, run)
        if len(runs) > 1:
            settings.print_fn(f"run {run}: {root}")
        pooled_run = _pool_trainers(
            root, name, trainers, fold_list, file_ending, read_splits(pre), settings
        )
        rows = _evaluate_pooled(root, name, pooled_run, gt, ds_json, settings)
        per_case += [{**r, "run": run} for r in rows] if len(runs) > 1 else rows
        for t, p in pooled_run.items():
            pooled[t if len(runs) == 1 else f"{t} (run {run})"] = p
    logs = read_logs(
        {run: run_results(results, run) for run in runs},
        name, trainers, fold_list, settings.plans, settings.configuration, settings.print_fn,
    )  # fmt: skip
    sources = {"reference_folder": str(gt), "dataset_json": str(ds_json)}
    return name, out, per_case, pooled, logs, sources


def make_report(
    dataset: str | int,
    trainers: Sequence[str],
    reference: str | None = None,
    n_bootstrap: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
    settings: EvaluationSettings | None = None,
    runs: Sequence[int] = (1,),
    records: str | os.PathLike[str] | None = None,
    **options: Any,
) -> ReportOutcome:
    """Pool, evaluate, and write the report of a cross-validation grid.

    Parameters
    ----------
    dataset
        Dataset id or ``DatasetNNN_Name``.
    trainers
        Trainers in table order.
    reference
        Trainer the others are tested against (default: the first of ``trainers``).
    n_bootstrap, seed, confidence
        Bootstrap settings (the bootstrap is deterministic for a given seed).
    settings, **options
        :class:`~nnunet_pde.benchmark.settings.EvaluationSettings` (which folds, tolerance,
        imputation, metrics, workers, ``output``, ``overwrite``, ``environ``, ``print_fn``),
        or its fields as keyword arguments. The default output folder is
        ``$nnUNet_results/<dataset>/nnunet_pde_report``, the default metrics
        :data:`DEFAULT_METRICS`; with ``overwrite`` False, existing report files are a
        ``FileExistsError`` before any work.
    runs
        Run indices of repeated trainings (:mod:`nnunet_pde.benchmark.runs`). With more than
        one, every run's tree is pooled and evaluated; the per-case statistics use each
        case's mean over the runs, and ``runs.csv`` / :attr:`ReportOutcome.runs` give the
        between-run spread.
    records
        A folder of fold records (:mod:`nnunet_pde.benchmark.records`, ``benchmark
        export``): the report is built from them instead of the results tree, and
        ``$nnUNet_results``/``$nnUNet_preprocessed`` are not needed. The default output
        folder is then ``<records>/report``.
    """
    settings = EvaluationSettings.of(settings, **options)
    policy, metrics = settings.imputation, settings.metric_list(DEFAULT_METRICS)
    trainers = check_trainer_names(trainers)
    fold_list = parse_folds(settings.folds)
    reference = reference or trainers[0]
    if reference not in trainers:
        raise BenchmarkError(
            f"--reference {reference} is not one of --trainers ({', '.join(trainers)})"
        )
    unknown = [m for m in metrics if m not in METRIC_INFO]
    if unknown:
        raise BenchmarkError(
            f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRIC_INFO)}"
        )
    runs = list(runs)
    if records is not None:
        out = settings.output_folder(Path(records) / "report")
        _refuse_existing_report(out, settings.overwrite)
        loaded = load_records(
            records, dataset, trainers, fold_list, runs, settings.plans, settings.configuration,
            settings.tolerance_mm, settings.print_fn,
        )  # fmt: skip
        name, logs = loaded.dataset, loaded.logs
        per_case = loaded.per_case if len(runs) > 1 else [
            {k: v for k, v in r.items() if k != "run"} for r in loaded.per_case
        ]  # fmt: skip
        pooled = {
            (t if len(runs) == 1 else f"{t} (run {run})"): p
            for run, by_trainer in loaded.pooled.items()
            for t, p in by_trainer.items()
        }
        sources = {"records": str(records)}
    else:
        name, out, per_case, pooled, logs, sources = _evaluate_results_tree(
            dataset, trainers, fold_list, runs, settings
        )
    run_rows = None
    stats_rows = per_case
    if len(runs) > 1:
        run_rows = run_spread_rows(per_case, trainers, reference, metrics, policy)
        stats_rows = average_runs(per_case, metrics, policy)
    summary, per_fold = compute_statistics(
        stats_rows, trainers, reference, metrics, policy, n_bootstrap, seed, confidence
    )
    meta = {
        **_report_meta(name, trainers, reference, fold_list, metrics, settings),
        "n_bootstrap": n_bootstrap,
        "seed": seed,
        "confidence": confidence,
        "runs": runs,
        **sources,
        "pooling": {t: p.as_dict() for t, p in pooled.items()},
        "software": software_versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    written = _write_report(
        out, per_case, summary, per_fold, metrics, meta, policy, run_rows,
        trajectory_rows(logs), curve_rows(logs),
    )  # fmt: skip
    return ReportOutcome(
        output=out, files=written, per_case=per_case, summary=summary, meta=meta,
        per_fold=per_fold, runs=run_rows,
    )  # fmt: skip
