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

import base64
import csv
import html
import io
import json
import math
import os
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from nnunet_pde.benchmark.manifest import software_versions
from nnunet_pde.benchmark.stats import bootstrap_ci, format_p, holm, paired_wilcoxon
from nnunet_pde.errors import BenchmarkError
from nnunet_pde.files import write_json
from nnunet_pde.folders import (
    check_trainer_names,
    dataset_id,
    fold_dir,
    parse_folds,
    read_splits,
    require_env_folder,
    resolve_dataset_name,
    trainer_dir_name,
)
from nnunet_pde.metrics import DISTANCE_METRICS, ImputationPolicy, aggregate
from nnunet_pde.metrics.aggregate import json_safe

__all__ = [
    "DEFAULT_METRICS",
    "METRIC_INFO",
    "REPORT_FILES",
    "PooledPredictions",
    "ReportOutcome",
    "impute_aligned",
    "make_report",
    "pool_predictions",
]

#: Metrics in the tables, in order (all of :data:`nnunet_pde.metrics.SUMMARY_METRICS` work).
DEFAULT_METRICS = ("dice", "hd95_mm", "nsd", "assd_mm")

#: Display name, decimals and direction of each metric.
METRIC_INFO: dict[str, tuple[str, int, str]] = {
    "dice": ("Dice", 4, "higher is better"),
    "hd95_mm": ("HD95 (mm)", 2, "lower is better"),
    "hausdorff_mm": ("HD (mm)", 2, "lower is better"),
    "assd_mm": ("ASSD (mm)", 2, "lower is better"),
    "nsd": ("NSD", 4, "higher is better"),
    "precision": ("Precision", 4, "higher is better"),
    "recall": ("Recall", 4, "higher is better"),
    "pred_volume_mm3": ("Predicted volume (mm³)", 0, ""),
    "ref_volume_mm3": ("Reference volume (mm³)", 0, ""),
}

#: Metrics with a box plot.
BOXPLOT_METRICS = ("dice", "hd95_mm")

PER_CASE_CSV = "per_case_metrics.csv"
SUMMARY_CSV = "summary.csv"
PER_FOLD_CSV = "per_fold.csv"
TABLES_MD = "tables.md"
TABLES_TEX = "tables.tex"
REPORT_HTML = "report.html"
REPORT_JSON = "report.json"

#: Every file the report writes.
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


# ------------------------------------------------------------------------------- pooling


@dataclass
class PooledPredictions:
    """One trainer's out-of-fold predictions.

    Attributes
    ----------
    trainer
        Trainer name.
    model_folder
        ``$nnUNet_results/<dataset>/<trainer>__<plans>__<configuration>``.
    cases
        Case id -> fold whose validation predicted it.
    folds_found
        Folds with at least one prediction.
    missing_folds
        Fold -> why it contributes nothing (no folder, no predictions).
    missing_cases
        Fold -> validation cases of ``splits_final.json`` without a prediction.
    unexpected_cases
        Fold -> predictions of cases that ``splits_final.json`` does not put in that fold.
    """

    trainer: str
    model_folder: Path
    cases: dict[str, int] = field(default_factory=dict)
    folds_found: list[int] = field(default_factory=list)
    missing_folds: dict[int, str] = field(default_factory=dict)
    missing_cases: dict[int, list[str]] = field(default_factory=dict)
    unexpected_cases: dict[int, list[str]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "trainer": self.trainer,
            "model_folder": str(self.model_folder),
            "n_cases": len(self.cases),
            "folds_found": self.folds_found,
            "missing_folds": {str(k): v for k, v in self.missing_folds.items()},
            "missing_cases": {str(k): v for k, v in self.missing_cases.items()},
            "unexpected_cases": {str(k): v for k, v in self.unexpected_cases.items()},
        }


def pool_predictions(
    results: str | os.PathLike[str],
    dataset: str,
    trainer: str,
    plans: str,
    configuration: str,
    folds: Sequence[int],
    file_ending: str = ".nii.gz",
    splits: Sequence[Mapping[str, Sequence[str]]] | None = None,
) -> PooledPredictions:
    """Collect ``fold_k/validation/*<file_ending>`` of the given folds, every case once.

    Raises
    ------
    BenchmarkError
        If a case was predicted by more than one fold (the predictions are then not
        out-of-fold), naming the case and the folds.
    """
    results = Path(results)
    model = results / dataset / trainer_dir_name(trainer, plans, configuration)
    pooled = PooledPredictions(trainer, model)
    duplicates: list[str] = []
    for k in folds:
        val = fold_dir(results, dataset, trainer, plans, configuration, k) / "validation"
        if not val.is_dir():
            pooled.missing_folds[k] = f"no folder {val}"
            continue
        cases = sorted(
            p.name[: -len(file_ending)]
            for p in val.iterdir()
            if p.is_file() and p.name.endswith(file_ending) and len(p.name) > len(file_ending)
        )
        if not cases:
            pooled.missing_folds[k] = f"no *{file_ending} predictions in {val}"
            continue
        pooled.folds_found.append(k)
        for c in cases:
            if c in pooled.cases:
                duplicates.append(f"{c} (folds {pooled.cases[c]} and {k})")
            else:
                pooled.cases[c] = k
        if splits is not None and k < len(splits):
            expected = set(splits[k].get("val", []))
            missing = sorted(expected - set(cases))
            unexpected = sorted(set(cases) - expected)
            if missing:
                pooled.missing_cases[k] = missing
            if unexpected:
                pooled.unexpected_cases[k] = unexpected
    if duplicates:
        raise BenchmarkError(
            f"{trainer}: {len(duplicates)} case(s) were predicted by more than one fold, so the "
            f"pooled predictions are not out-of-fold: {', '.join(duplicates[:10])}"
        )
    return pooled


# -------------------------------------------------------------------------- statistics


def impute_aligned(
    values: Sequence[float] | np.ndarray,
    diagonals_mm: Sequence[float] | np.ndarray | None,
    policy: ImputationPolicy,
) -> np.ndarray:
    """Per-case values with ``policy`` applied to infinite entries, keeping the case order.

    Like :func:`nnunet_pde.metrics.impute`, but instead of dropping, an excluded value
    (``inf`` under ``exclude``) becomes ``nan``; ``nan`` stays ``nan``. The finite entries are
    exactly the values :func:`nnunet_pde.metrics.aggregate` summarises, and the alignment
    with the cases is what the paired test needs.
    """
    v = np.asarray(values, dtype=np.float64).copy()
    inf = np.isinf(v)
    if not inf.any():
        return v
    if policy.name == "exclude":
        v[inf] = np.nan
    elif policy.name == "worst":
        v[inf] = float(policy.worst_value_mm)  # type: ignore[arg-type]
    else:
        if diagonals_mm is None:
            raise ValueError("imputation policy 'volume_diagonal' needs the per-case diagonals")
        v[inf] = np.asarray(diagonals_mm, dtype=np.float64)[inf]
    return v


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
    regions: list[str] = []
    for r in rows:
        if r["region"] not in regions:
            regions.append(str(r["region"]))
    by_tr: dict[str, list[Mapping[str, Any]]] = {t: [] for t in trainers}
    for r in rows:
        by_tr[str(r["trainer"])].append(r)

    # Aligned per-case values: (trainer, region, metric) -> {case: value}
    aligned: dict[tuple[str, str, str], dict[str, float]] = {}
    folds_of: dict[tuple[str, str], dict[str, int]] = {}
    for t in trainers:
        for region in regions:
            rr = [r for r in by_tr[t] if r["region"] == region]
            folds_of[(t, region)] = {str(r["case"]): int(r["fold"]) for r in rr}
            diag = [float(r["image_diagonal_mm"]) for r in rr]
            for m in metrics:
                vals = [float(r[m]) for r in rr]
                if m in DISTANCE_METRICS:
                    vals = impute_aligned(vals, diag, policy).tolist()
                aligned[(t, region, m)] = {str(r["case"]): v for r, v in zip(rr, vals, strict=True)}

    summary: list[dict[str, Any]] = []
    for region in regions:
        for m in metrics:
            block = []
            for t in trainers:
                rr = [r for r in by_tr[t] if r["region"] == region]
                if not rr:
                    continue
                agg = aggregate(rr, policy, metrics=(m,))["regions"][region]
                st = agg["metrics"][m]
                values = np.fromiter(aligned[(t, region, m)].values(), dtype=np.float64)
                lo, hi = bootstrap_ci(
                    values, n_bootstrap, confidence, _cell_seed(seed, t, region, m)
                )
                row: dict[str, Any] = {
                    "region": region,
                    "labels": agg["labels"],
                    "trainer": t,
                    "metric": m,
                    "n_cases": st["n_cases"],
                    "n": st["n"],
                    "n_nan": st["n_nan"],
                    "n_inf": st["n_inf"],
                    "n_imputed": st["n_imputed"],
                    "n_excluded": st["n_excluded"],
                    "mean": st["mean"],
                    "sd": st["std"],
                    "median": st["median"],
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
                    ref_vals = aligned[(reference, region, m)]
                    mine = aligned[(t, region, m)]
                    common = sorted(set(ref_vals) & set(mine))
                    test = paired_wilcoxon([mine[c] for c in common], [ref_vals[c] for c in common])
                    row.update(
                        n_paired=test.n,
                        mean_difference=test.mean_difference,
                        wilcoxon_statistic=test.statistic,
                        p_value=test.pvalue,
                    )
                block.append(row)
            adjusted = holm([r["p_value"] for r in block])
            for r, p in zip(block, adjusted, strict=True):
                r["p_holm"] = float(p)
            summary.extend(block)

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
    return summary, per_fold


# ------------------------------------------------------------------------------ tables


def _num(x: float, digits: int) -> str:
    return f"{x:.{digits}f}" if isinstance(x, int | float) and math.isfinite(x) else "n/a"


def _mean_sd(r: Mapping[str, Any], digits: int, pm: str = " ± ") -> str:
    text = _num(r["mean"], digits)
    if math.isfinite(r["sd"]):
        text += f"{pm}{_num(r['sd'], digits)}"
    return text


def _notes(r: Mapping[str, Any]) -> str:
    notes = []
    if r["n_imputed"]:
        notes.append(f"{r['n_imputed']} imputed")
    if r["n_excluded"]:
        notes.append(f"{r['n_excluded']} excluded")
    return ", ".join(notes)


TABLE_HEADER = (
    "region",
    "trainer",
    "n",
    "mean ± SD",
    "95% CI",
    "Δ vs ref",
    "p",
    "p (Holm)",
    "notes",
)


def table_rows(summary: Sequence[Mapping[str, Any]], metric: str) -> list[list[str]]:
    """The cells of one metric's table, in :data:`TABLE_HEADER` order (plain text)."""
    digits = METRIC_INFO.get(metric, (metric, 3, ""))[1]
    out = []
    for r in summary:
        if r["metric"] != metric:
            continue
        is_ref = r["trainer"] == r["reference"]
        out.append(
            [
                str(r["region"]),
                str(r["trainer"]),
                str(r["n"]),
                _mean_sd(r, digits),
                f"[{_num(r['ci_low'], digits)}, {_num(r['ci_high'], digits)}]",
                "reference"
                if is_ref
                else f"{r['mean_difference']:+.{digits}f}"
                if math.isfinite(r["mean_difference"])
                else "n/a",
                "" if is_ref else format_p(r["p_value"]),
                "" if is_ref else format_p(r["p_holm"]),
                _notes(r),
            ]
        )
    return out


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    lines = ["| " + " | ".join(esc(h) for h in header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _per_fold_table(
    per_fold: Sequence[Mapping[str, Any]], metrics: Sequence[str]
) -> tuple[list[str], list[list[str]]]:
    header = ["region", "trainer", "fold", "cases"] + [
        METRIC_INFO.get(m, (m, 3, ""))[0] for m in metrics
    ]
    rows = [
        [str(r["region"]), str(r["trainer"]), str(r["fold"]), str(r["n_cases"])]
        + [_num(r[f"{m}_mean"], METRIC_INFO.get(m, (m, 3, ""))[1]) for m in metrics]
        for r in per_fold
    ]
    return header, rows


def _context_lines(meta: Mapping[str, Any]) -> list[str]:
    imp = meta["imputation"]
    imp_text = imp["policy"] + (
        f" ({imp['worst_value_mm']} mm)" if imp.get("worst_value_mm") is not None else ""
    )
    lines = [
        f"Dataset {meta['dataset']}, configuration {meta['configuration']}, plans "
        f"{meta['plans']}; folds {', '.join(str(f) for f in meta['folds'])}; out-of-fold "
        f"predictions pooled over folds (each case once).",
        f"Mean ± SD over cases; {meta['confidence'] * 100:g}% CI: percentile bootstrap of the mean "
        f"({meta['n_bootstrap']} case resamples, seed {meta['seed']}). Δ vs ref: mean paired "
        f"difference (trainer − {meta['reference']}); p: two-sided Wilcoxon signed-rank test vs "
        f"{meta['reference']} on the cases both have a value for; p (Holm): Holm-corrected over "
        "the trainers within each region and metric.",
        f"Infinite distances (one mask empty): {imp_text}; undefined values (both masks empty) "
        f"are left out. NSD tolerance {meta['tolerance_mm']:g} mm.",
    ]
    for t, info in meta["pooling"].items():
        if info["missing_folds"]:
            lines.append(
                f"**Missing folds** for {t}: "
                + "; ".join(f"fold {k}: {why}" for k, why in info["missing_folds"].items())
            )
        for k, cases in info["missing_cases"].items():
            lines.append(
                f"**Missing cases** for {t} fold {k}: {len(cases)} ({', '.join(cases[:10])})"
            )
    return lines


def render_markdown(
    summary: Sequence[Mapping[str, Any]],
    per_fold: Sequence[Mapping[str, Any]],
    metrics: Sequence[str],
    meta: Mapping[str, Any],
) -> str:
    """``tables.md``: one table per metric, then the per-fold means."""
    parts = [f"# Cross-validation benchmark: {meta['dataset']}", ""]
    parts += [line + "\n" for line in _context_lines(meta)]
    for m in metrics:
        name, _, direction = METRIC_INFO.get(m, (m, 3, ""))
        parts += [
            f"## {name}" + (f" ({direction})" if direction else ""),
            "",
            _md_table(TABLE_HEADER, table_rows(summary, m)),
            "",
        ]
    header, rows = _per_fold_table(per_fold, metrics)
    parts += [
        "## Per-fold means (descriptive)",
        "",
        _md_table(header, rows),
        "",
    ]
    return "\n".join(parts)


def _tex_escape(s: str) -> str:
    repl = {
        "\\": r"\textbackslash{}",
        "&": r"\&",
        "%": r"\%",
        "$": r"\$",
        "#": r"\#",
        "_": r"\_",
        "{": r"\{",
        "}": r"\}",
        "~": r"\textasciitilde{}",
        "^": r"\textasciicircum{}",
    }
    return "".join(repl.get(ch, ch) for ch in s)


def render_latex(
    summary: Sequence[Mapping[str, Any]],
    per_fold: Sequence[Mapping[str, Any]],
    metrics: Sequence[str],
    meta: Mapping[str, Any],
) -> str:
    """``tables.tex``: booktabs tables (``\\usepackage{booktabs}``), one per metric."""
    out = [
        "% nnunet-pde benchmark report; needs \\usepackage{booktabs}",
        f"% dataset {_tex_escape(str(meta['dataset']))}, reference {meta['reference']}",
    ]
    for m in metrics:
        name, digits, direction = METRIC_INFO.get(m, (m, 3, ""))
        tex_name = _tex_escape(name.replace("mm³", "MM3")).replace("MM3", "mm$^3$")
        out += [
            "\\begin{table}[t]",
            "\\centering",
            f"\\caption{{{tex_name} "
            f"({direction}) on {_tex_escape(str(meta['dataset']))}: mean $\\pm$ SD over cases, "
            f"bootstrap {meta['confidence'] * 100:g}\\% CI, two-sided Wilcoxon signed-rank test "
            f"vs {_tex_escape(str(meta['reference']))} with Holm correction.}}",
            f"\\label{{tab:benchmark-{m.replace('_', '-')}}}",
            "\\begin{tabular}{llrllrrr}",
            "\\toprule",
            "Region & Trainer & $n$ & Mean $\\pm$ SD & 95\\% CI & $\\Delta$ & $p$ & "
            "$p_\\mathrm{Holm}$ \\\\",
            "\\midrule",
        ]
        previous = None
        for r in summary:
            if r["metric"] != m:
                continue
            if previous is not None and r["region"] != previous:
                out.append("\\midrule")
            previous = r["region"]
            is_ref = r["trainer"] == r["reference"]
            ms = _num(r["mean"], digits)
            if math.isfinite(r["sd"]):
                ms += f" $\\pm$ {_num(r['sd'], digits)}"
            delta = (
                "ref."
                if is_ref
                else (
                    f"{r['mean_difference']:+.{digits}f}"
                    if math.isfinite(r["mean_difference"])
                    else "n/a"
                )
            )
            p = "" if is_ref else format_p(r["p_value"]).replace("<", "$<$")
            ph = "" if is_ref else format_p(r["p_holm"]).replace("<", "$<$")
            out.append(
                f"{_tex_escape(str(r['region']))} & {_tex_escape(str(r['trainer']))} & {r['n']} & "
                f"{ms} & [{_num(r['ci_low'], digits)}, {_num(r['ci_high'], digits)}] & "
                f"{delta} & {p} & {ph} \\\\"
            )
        out += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
    header, rows = _per_fold_table(per_fold, metrics)
    out += [
        "\\begin{table}[t]",
        "\\centering",
        "\\caption{Per-fold means (descriptive).}",
        "\\label{tab:benchmark-per-fold}",
        "\\begin{tabular}{ll" + "r" * (len(header) - 2) + "}",
        "\\toprule",
        " & ".join(_tex_escape(h.replace("mm³", "MM3")).replace("MM3", "mm$^3$") for h in header)
        + " \\\\",
        "\\midrule",
        *(" & ".join(_tex_escape(c) for c in row) + " \\\\" for row in rows),
        "\\bottomrule",
        "\\end{tabular}",
        "\\end{table}",
        "",
    ]
    return "\n".join(out)


# ----------------------------------------------------------------------------- figures


def boxplot_png(
    rows: Sequence[Mapping[str, Any]],
    trainers: Sequence[str],
    metric: str,
    policy: ImputationPolicy,
) -> bytes:
    """PNG bytes: one panel per region, one box per trainer (values after imputation).

    Uses matplotlib's object API with the Agg canvas, so no global pyplot state is touched.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    regions: list[str] = []
    for r in rows:
        if r["region"] not in regions:
            regions.append(str(r["region"]))
    fig = Figure(figsize=(max(4.0, 1.2 + 0.9 * len(trainers)) * len(regions) / 1.5 + 1, 4.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(regions), squeeze=False)[0]
    name = METRIC_INFO.get(metric, (metric, 3, ""))[0]
    for ax, region in zip(axes, regions, strict=True):
        data = []
        for t in trainers:
            rr = [r for r in rows if r["trainer"] == t and r["region"] == region]
            v = np.asarray([float(r[metric]) for r in rr], dtype=np.float64)
            if metric in DISTANCE_METRICS:
                v = impute_aligned(v, [float(r["image_diagonal_mm"]) for r in rr], policy)
            data.append(v[np.isfinite(v)])
        ax.boxplot(data, showmeans=True, widths=0.6)
        ax.set_xticks(range(1, len(trainers) + 1))
        ax.set_xticklabels([_short(t) for t in trainers], rotation=30, ha="right", fontsize=8)
        ax.set_title(region, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel(name)
    fig.suptitle(f"{name} per case (triangle: mean)", fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def _short(trainer: str) -> str:
    return trainer.removeprefix("nnUNetTrainer") or trainer


def render_html(
    summary: Sequence[Mapping[str, Any]],
    per_fold: Sequence[Mapping[str, Any]],
    metrics: Sequence[str],
    meta: Mapping[str, Any],
    images: Mapping[str, bytes],
) -> str:
    """``report.html``: the tables and the box plots (embedded as base64), no external files."""

    def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def para(line: str) -> str:
        text = html.escape(line)
        while "**" in text:
            text = text.replace("**", "<strong>", 1).replace("**", "</strong>", 1)
        return f"<p>{text}</p>"

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Benchmark {html.escape(str(meta['dataset']))}</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;"
        "padding:0 1em;color:#222}table{border-collapse:collapse;margin:1em 0;font-size:0.9em}"
        "th,td{border-bottom:1px solid #ddd;padding:0.3em 0.6em;text-align:left}"
        "th{background:#f3f3f3}img{max-width:100%}small{color:#666}</style>",
        "</head><body>",
        f"<h1>Cross-validation benchmark: {html.escape(str(meta['dataset']))}</h1>",
        *(para(line) for line in _context_lines(meta)),
    ]
    for m in metrics:
        name, _, direction = METRIC_INFO.get(m, (m, 3, ""))
        parts.append(
            f"<h2>{html.escape(name)}"
            + (f" <small>({html.escape(direction)})</small>" if direction else "")
            + "</h2>"
        )
        parts.append(table(TABLE_HEADER, table_rows(summary, m)))
    for m, png in images.items():
        name = METRIC_INFO.get(m, (m, 3, ""))[0]
        parts.append(f"<h2>Box plot: {html.escape(name)}</h2>")
        parts.append(
            f'<img alt="box plot of {html.escape(name)}" '
            f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'
        )
    header, rows = _per_fold_table(per_fold, metrics)
    parts += ["<h2>Per-fold means (descriptive)</h2>", table(header, rows)]
    parts.append(
        f"<p><small>nnunet-pde {html.escape(str(meta['software'].get('nnunet_pde')))}, "
        f"created {html.escape(str(meta['created']))}</small></p>"
    )
    parts.append("</body></html>")
    return "\n".join(parts)


# ------------------------------------------------------------------------------ driver


@dataclass
class ReportOutcome:
    """What ``benchmark report`` produced."""

    output: Path
    files: list[Path]
    summary: list[dict[str, Any]]
    per_fold: list[dict[str, Any]]
    per_case: list[dict[str, Any]]
    meta: dict[str, Any]


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: repr(v) if isinstance(v, float) else v for k, v in r.items()})


SUMMARY_COLUMNS = (
    "region",
    "labels",
    "trainer",
    "metric",
    "n_cases",
    "n",
    "n_nan",
    "n_inf",
    "n_imputed",
    "n_excluded",
    "mean",
    "sd",
    "median",
    "ci_low",
    "ci_high",
    "reference",
    "n_paired",
    "mean_difference",
    "wilcoxon_statistic",
    "p_value",
    "p_holm",
)


def make_report(
    dataset: str | int,
    trainers: Sequence[str],
    configuration: str = "3d_fullres",
    plans: str = "nnUNetPlans",
    folds: Sequence[int | str] = (0, 1, 2, 3, 4),
    reference: str | None = None,
    output: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    tolerance_mm: float = 1.0,
    policy: ImputationPolicy | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    n_bootstrap: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
    num_workers: int | None = None,
    progress: bool = True,
    environ: Mapping[str, str] | None = None,
    print_fn: Callable[[str], None] = print,
) -> ReportOutcome:
    """Pool, evaluate, and write the report of a cross-validation grid.

    Parameters
    ----------
    dataset
        Dataset id or ``DatasetNNN_Name``.
    trainers
        Trainers in table order.
    configuration, plans, folds
        Which model folders and folds to pool.
    reference
        Trainer the others are tested against (default: the first of ``trainers``).
    output
        Output folder (default ``$nnUNet_results/<dataset>/nnunet_pde_report``).
    overwrite
        Replace report files that exist (otherwise FileExistsError before any work).
    tolerance_mm, policy, metrics
        NSD tolerance (mm), imputation of infinite distances, metrics in the tables.
    n_bootstrap, seed, confidence
        Bootstrap settings (the bootstrap is deterministic for a given seed).
    num_workers, progress
        Evaluation processes and progress bars (see
        :func:`nnunet_pde.metrics.evaluate.evaluate_folders`).
    environ
        Environment holding the nnU-Net folder variables (default ``os.environ``).
    print_fn
        Where progress lines go.
    """
    from nnunet_pde.metrics.evaluate import CSV_COLUMNS, evaluate_folders

    env = os.environ if environ is None else environ
    policy = policy or ImputationPolicy()
    trainers = check_trainer_names(trainers)
    fold_list = parse_folds(folds)
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
    results = require_env_folder("nnUNet_results", env)
    preprocessed = require_env_folder("nnUNet_preprocessed", env)
    name = resolve_dataset_name(dataset, env)
    pre = preprocessed / name
    gt = pre / "gt_segmentations"
    ds_json = pre / "dataset.json"
    if not gt.is_dir():
        raise BenchmarkError(
            f"{gt} does not exist: nnU-Net writes the reference segmentations there during "
            f"nnUNetv2_plan_and_preprocess -d {dataset_id(name)}"
        )
    if not ds_json.is_file():
        raise BenchmarkError(f"{ds_json} does not exist (nnUNetv2_plan_and_preprocess copies it)")
    dataset_json = json.loads(ds_json.read_text())
    file_ending = str(dataset_json.get("file_ending", ".nii.gz"))

    out = Path(output) if output is not None else results / name / REPORT_DIRNAME
    if not overwrite:
        existing = [str(out / f) for f in REPORT_FILES if (out / f).exists()]
        if existing:
            raise FileExistsError(
                f"report files exist in {out}: {', '.join(Path(e).name for e in existing)}; "
                "pass --overwrite to replace them, or --output DIR"
            )

    splits = read_splits(pre)
    pooled: dict[str, PooledPredictions] = {}
    for t in trainers:
        p = pool_predictions(results, name, t, plans, configuration, fold_list, file_ending, splits)
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
        print_fn(line)

    per_case: list[dict[str, Any]] = []
    for t in trainers:
        for k in pooled[t].folds_found:
            val = fold_dir(results, name, t, plans, configuration, k) / "validation"
            print_fn(f"evaluating {t} fold {k} ({val})")
            rows, _ = evaluate_folders(
                val,
                gt,
                dataset_json=ds_json,
                num_workers=num_workers,
                tolerance_mm=tolerance_mm,
                progress=progress,
                policy=policy,
                allow_missing_predictions=True,
                write=False,
            )
            per_case.extend({"trainer": t, "fold": k, **r} for r in rows)

    summary, per_fold = compute_statistics(
        per_case, trainers, reference, metrics, policy, n_bootstrap, seed, confidence
    )
    meta: dict[str, Any] = {
        "kind": "nnunet_pde benchmark report",
        "dataset": name,
        "configuration": configuration,
        "plans": plans,
        "trainers": list(trainers),
        "reference": reference,
        "folds": fold_list,
        "metrics": list(metrics),
        "tolerance_mm": float(tolerance_mm),
        "imputation": policy.as_dict(),
        "n_bootstrap": n_bootstrap,
        "seed": seed,
        "confidence": confidence,
        "reference_folder": str(gt),
        "dataset_json": str(ds_json),
        "pooling": {t: p.as_dict() for t, p in pooled.items()},
        "software": software_versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }

    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def put(fname: str, writer: Callable[[Path], None]) -> None:
        path = out / fname
        writer(path)
        written.append(path)

    put(PER_CASE_CSV, lambda p: _write_csv(p, per_case, ("trainer", "fold", *CSV_COLUMNS)))
    put(SUMMARY_CSV, lambda p: _write_csv(p, summary, SUMMARY_COLUMNS))
    fold_cols = ["region", "trainer", "fold", "n_cases"]
    for m in metrics:
        fold_cols += [f"{m}_n", f"{m}_mean"]
    put(PER_FOLD_CSV, lambda p: _write_csv(p, per_fold, fold_cols))
    put(
        TABLES_MD,
        lambda p: p.write_text(render_markdown(summary, per_fold, metrics, meta), encoding="utf-8"),
    )
    put(
        TABLES_TEX,
        lambda p: p.write_text(render_latex(summary, per_fold, metrics, meta), encoding="utf-8"),
    )
    images = {m: boxplot_png(per_case, trainers, m, policy) for m in BOXPLOT_METRICS}
    for m, png in images.items():
        put(f"boxplot_{m}.png", lambda p, png=png: p.write_bytes(png))
    put(
        REPORT_HTML,
        lambda p: p.write_text(
            render_html(summary, per_fold, metrics, meta, images), encoding="utf-8"
        ),
    )
    put(
        REPORT_JSON,
        lambda p: write_json(
            p, json_safe({**meta, "summary": summary, "per_fold": per_fold}), allow_nan=False
        ),
    )
    return ReportOutcome(out, written, summary, per_fold, per_case, meta)
