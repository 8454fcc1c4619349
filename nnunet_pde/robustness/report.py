"""``nnunet-pde benchmark robustness``: metric versus label fraction, label noise or scanner shift.

Three regimes, each scored per case with :mod:`nnunet_pde.metrics` (through
:func:`nnunet_pde.metrics.evaluate.evaluate_folders`) and summarised per trainer, curve, level,
region and metric:

``few-labels``
    Out-of-fold validation predictions of ``<T>_FracNN`` (trained on NN % of each fold's training
    cases) and of ``<T>`` itself (100 %), pooled over the folds like ``benchmark report`` does
    (:func:`nnunet_pde.benchmark.report.pool_predictions`), against
    ``$nnUNet_preprocessed/<dataset>/gt_segmentations``. One curve; x axis = label fraction in
    (0, 1], the clean point is 1.0.
``noisy-labels``
    Out-of-fold predictions of the same trainers on a clean dataset and on datasets derived from
    it by ``nnunet-pde derive noisy-labels``, always against the *clean* labels (raw ``labelsTr``
    of the clean dataset, ``labelsTr_clean`` of a derived one; never the noisy
    ``gt_segmentations``). One curve per corruption mode; x axis = ``magnitude_mm``, the clean
    dataset is magnitude 0.
``scanner-shift``
    Test-set predictions (``nnUNetv2_predict``, ensemble of the folds) of the clean test images
    and of every perturbation and severity level written by ``nnunet-pde derive shifted-images``,
    against the manifest's test labels. One curve per perturbation, split into perturbations that
    nnU-Net's training augmentation covers and those it does not; x axis = severity level, the
    clean images are level 0.

For every curve the summary gives mean, SD and n over cases per level, the drop from the clean
point (:func:`relative_drop`) and the normalised area under the metric-versus-severity curve
(:func:`severity_auc`). Outputs: :data:`ROBUSTNESS_FILES` plus one PNG per curve and metric.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import shlex
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from nnunet_pde.benchmark.manifest import software_versions
from nnunet_pde.benchmark.report import (
    METRIC_INFO,
    _md_table,
    _num,
    _short,
    _write_csv,
    pool_predictions,
)
from nnunet_pde.commands import build_predict_command, run_command
from nnunet_pde.errors import BenchmarkError
from nnunet_pde.files import list_cases, write_json
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
from nnunet_pde.metrics import ImputationPolicy, aggregate
from nnunet_pde.metrics.aggregate import json_safe
from nnunet_pde.robustness.noisy_labels import CLEAN_LABELS_DIR, DERIVED_JSON, read_derived_info
from nnunet_pde.robustness.scanner_shift import MANIFEST as SHIFT_MANIFEST
from nnunet_pde.robustness.scanner_shift import level_folder, read_manifest

__all__ = [
    "AUC_CSV",
    "DEFAULT_METRICS",
    "PER_CASE_CSV",
    "RELATIVE_DROP_METRICS",
    "ROBUSTNESS_FILES",
    "ROBUSTNESS_JSON",
    "SHIFT_MANIFEST",
    "SUMMARY_CSV",
    "TABLES_MD",
    "RobustnessOutcome",
    "drop_kind",
    "few_label_trainer",
    "format_auc_overview",
    "read_shift_manifest",
    "relative_drop",
    "robustness_few_labels",
    "robustness_noisy_labels",
    "robustness_scanner_shift",
    "severity_auc",
]

#: Metrics in the tables and figures by default (every metric is in ``per_case.csv``).
DEFAULT_METRICS = ("dice", "hd95_mm")
#: Metrics where larger is better with 0 as the floor: their drop is relative to the clean value.
RELATIVE_DROP_METRICS = ("dice", "nsd", "precision", "recall")

PER_CASE_CSV = "per_case.csv"
SUMMARY_CSV = "summary.csv"
AUC_CSV = "auc.csv"
TABLES_MD = "tables.md"
ROBUSTNESS_JSON = "robustness.json"
#: The fixed output files (the figures ``<curve>_<metric>.png`` come in addition).
ROBUSTNESS_FILES = (PER_CASE_CSV, SUMMARY_CSV, AUC_CSV, TABLES_MD, ROBUSTNESS_JSON)

#: Default output folder: ``$nnUNet_results/<dataset>/nnunet_pde_robustness/<regime>``.
ROBUSTNESS_DIRNAME = "nnunet_pde_robustness"
#: Written into every prediction folder that ``--predict`` made (trainer, folds, command).
PREDICTION_RECORD = "nnunet_pde_prediction.json"
#: Condition key and curve name of the clean point shared by every curve of a regime.
CLEAN = "clean"

_GROUP_HEADINGS = {
    "covered_by_nnunet": "Perturbations covered by nnU-Net's training augmentation",
    "not_covered_by_nnunet": "Perturbations NOT covered by nnU-Net's training augmentation",
}

SUMMARY_COLUMNS = (
    "trainer",
    "curve",
    "group",
    "level",
    "level_label",
    "condition",
    "region",
    "labels",
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
    "clean_mean",
    "drop",
    "drop_kind",
)

AUC_COLUMNS = (
    "trainer",
    "curve",
    "group",
    "axis",
    "region",
    "metric",
    "levels",
    "n_levels",
    "x_min",
    "x_max",
    "clean_level",
    "clean_mean",
    "auc",
    "auc_drop",
    "drop_kind",
)


# -------------------------------------------------------------------------- pure functions


def severity_auc(levels: Sequence[float], values: Sequence[float]) -> float:
    """Normalised area under a metric-versus-severity curve.

    The points are sorted by level and integrated with the trapezoid rule over the levels
    given (the clean point included), then divided by the span ``max(levels) - min(levels)``,
    so a flat curve gives its value and the result is in the metric's unit.

    Parameters
    ----------
    levels
        x values (label fraction, magnitude in mm, severity level), distinct.
    values
        The metric at each level (same length).

    Returns
    -------
    float
        The normalised area; the value itself for a single point; ``nan`` if a value is not
        finite (a level without any usable case).

    Examples
    --------
    >>> severity_auc([0, 1, 2], [1.0, 0.8, 0.4])  # (0.9 + 0.6) / 2
    0.75
    """
    x = np.asarray(levels, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"need one value per level, got {x.size} levels and {y.size} values")
    if x.size == 0:
        raise ValueError("need at least one level")
    if not np.isfinite(x).all():
        raise ValueError(f"levels must be finite numbers, got {x.tolist()}")
    if np.unique(x).size != x.size:
        raise ValueError(f"levels must be distinct, got {x.tolist()}")
    if not np.isfinite(y).all():
        return float("nan")
    order = np.argsort(x)
    x, y = x[order], y[order]
    if x.size == 1:
        return float(y[0])
    area = float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))
    return area / float(x[-1] - x[0])


def drop_kind(metric: str) -> str:
    """``"relative"`` for Dice-like metrics (:data:`RELATIVE_DROP_METRICS`), else ``"absolute"``."""
    if metric not in METRIC_INFO:
        raise ValueError(f"unknown metric '{metric}'; choose from {', '.join(METRIC_INFO)}")
    return "relative" if metric in RELATIVE_DROP_METRICS else "absolute"


def relative_drop(clean: float, value: float, metric: str) -> float:
    """How much worse ``value`` is than the clean regime's ``clean`` (positive = worse).

    Parameters
    ----------
    clean, value
        The metric in the clean regime and at a level (e.g. mean Dice over cases).
    metric
        A metric of :data:`nnunet_pde.benchmark.report.METRIC_INFO`.

    Returns
    -------
    float
        For Dice-like metrics (Dice, NSD, precision, recall) the relative drop
        ``(clean - value) / clean`` (``nan`` if ``clean`` is 0 or either is not finite); for
        distances (HD95, HD, ASSD in mm) and volumes the absolute change ``value - clean``
        (for distances positive means worse).

    Examples
    --------
    >>> relative_drop(0.8, 0.6, "dice")
    0.25
    >>> relative_drop(2.0, 5.5, "hd95_mm")
    3.5
    """
    kind = drop_kind(metric)
    c, v = float(clean), float(value)
    if not (math.isfinite(c) and math.isfinite(v)):
        return float("nan")
    if kind == "relative":
        return (c - v) / c if c != 0 else float("nan")
    return v - c


# ------------------------------------------------------------------------ plan structures


@dataclass
class Condition:
    """One (trainer, condition) to score: where its predictions and references are.

    Attributes
    ----------
    key
        Condition id: the model (``T_Frac25``), the dataset (``Dataset601_X``), the
        perturbation folder (``bias_field/level2``) or ``clean``.
    trainer
        The trainer the row belongs to in the tables.
    curve
        Curve id, or :data:`CLEAN` when the point is shared by every curve.
    level, label
        x value and its display text.
    sources
        Prediction folders and the fold each one is the validation of (None: test set).
    reference, dataset_json
        Reference label folder and the ``dataset.json`` with the labels or regions.
    cases
        Case id -> fold (None for test predictions), for the case-set checks.
    info
        Extra facts recorded in ``robustness.json``.
    """

    key: str
    trainer: str
    curve: str
    level: float
    label: str
    sources: list[tuple[Path, int | None]]
    reference: Path
    dataset_json: Path
    cases: dict[str, int | None] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "trainer": self.trainer,
            "curve": self.curve,
            "level": self.level,
            "label": self.label,
            "predictions": [str(p) for p, _ in self.sources],
            "folds": [k for _, k in self.sources],
            "reference": str(self.reference),
            "dataset_json": str(self.dataset_json),
            "n_cases": len(self.cases),
            **self.info,
        }


@dataclass
class Curve:
    """A metric-versus-severity curve: its points are condition keys at increasing levels."""

    id: str
    title: str
    points: list[tuple[float, str]]
    group: str = ""
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Plan:
    regime: str
    title: str
    dataset: str
    axis: str
    clean_level: float
    trainers: list[str]
    conditions: dict[tuple[str, str], Condition]
    curves: list[Curve]
    meta: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


@dataclass
class RobustnessOutcome:
    """What ``benchmark robustness`` produced.

    Attributes
    ----------
    regime
        ``few-labels``, ``noisy-labels`` or ``scanner-shift``.
    output, files
        The output folder and every file written into it.
    per_case, summary, auc
        The rows of ``per_case.csv``, ``summary.csv`` and ``auc.csv``.
    meta
        The content of ``robustness.json`` without the rows.
    warnings
        Problems that did not stop the report (missing folds, differing case sets ...).
    """

    regime: str
    output: Path
    files: list[Path]
    per_case: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    auc: list[dict[str, Any]]
    meta: dict[str, Any]
    warnings: list[str]


# --------------------------------------------------------------------------- shared helpers


def _check_metrics(metrics: Sequence[str]) -> list[str]:
    unknown = [m for m in metrics if m not in METRIC_INFO]
    if unknown or not metrics:
        raise BenchmarkError(
            f"unknown metric(s) {', '.join(unknown) or '(none given)'}; choose from "
            f"{', '.join(METRIC_INFO)}"
        )
    return list(dict.fromkeys(metrics))


def _train_hint(name: str, trainer: str, configuration: str, plans: str, folds: list[int]) -> str:
    f = " ".join(map(str, folds))
    return (
        f"    nnunet-pde benchmark run {dataset_id(name)} --trainers {trainer} -c {configuration} "
        f"-p {plans} --folds {f}\n"
        f"    (or per fold: nnUNetv2_train {dataset_id(name)} {configuration} FOLD -tr {trainer} "
        f"-p {plans})"
    )


def _check_output(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise BenchmarkError(f"--output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{out} exists and is not empty; pass --overwrite to replace the robustness outputs "
            "in it, or choose another folder with --output DIR"
        )


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "curve"


def _pool_oof(
    results: Path,
    name: str,
    model_trainer: str,
    plans: str,
    configuration: str,
    folds: list[int],
    file_ending: str,
    splits: Any,
    warnings: list[str],
) -> tuple[list[tuple[Path, int | None]], dict[str, int | None], dict[str, Any]] | None:
    """Pooled out-of-fold folders of one model, or None if it has no prediction at all."""
    pooled = pool_predictions(
        results, name, model_trainer, plans, configuration, folds, file_ending, splits
    )
    if not pooled.cases:
        return None
    if pooled.missing_folds:
        warnings.append(
            f"{name} {model_trainer}: MISSING folds "
            + "; ".join(f"fold {k}: {why}" for k, why in pooled.missing_folds.items())
        )
    for k, cases in pooled.missing_cases.items():
        warnings.append(
            f"{name} {model_trainer} fold {k}: {len(cases)} validation case(s) without "
            f"prediction ({', '.join(cases[:10])})"
        )
    sources: list[tuple[Path, int | None]] = [
        (fold_dir(results, name, model_trainer, plans, configuration, k) / "validation", k)
        for k in pooled.folds_found
    ]
    return sources, dict(pooled.cases), pooled.as_dict()


def _case_set_warnings(plan: _Plan) -> list[str]:
    """Differences in the pooled case sets (and fold assignments) between conditions."""
    out: list[str] = []
    items = list(plan.conditions.values())
    if not items:
        return out
    first = items[0]
    ref_cases = first.cases
    for c in items[1:]:
        missing = sorted(set(ref_cases) - set(c.cases))
        extra = sorted(set(c.cases) - set(ref_cases))
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"lacks {len(missing)} case(s) ({', '.join(missing[:5])})")
            if extra:
                parts.append(f"has {len(extra)} extra case(s) ({', '.join(extra[:5])})")
            out.append(
                f"case sets differ: {c.trainer} {c.key} {' and '.join(parts)} compared with "
                f"{first.trainer} {first.key}; the levels are then not compared on the same cases"
            )
        moved = sorted(
            k
            for k in set(ref_cases) & set(c.cases)
            if ref_cases[k] is not None and c.cases[k] is not None and ref_cases[k] != c.cases[k]
        )
        if moved:
            out.append(
                f"fold assignment differs: {c.trainer} {c.key} validates {len(moved)} case(s) in "
                f"another fold than {first.trainer} {first.key} ({', '.join(moved[:5])}); the "
                "splits (splits_final.json) are not the same"
            )
    return out


def _evaluate(
    plan: _Plan,
    tolerance_mm: float,
    policy: ImputationPolicy,
    num_workers: int | None,
    progress: bool,
    print_fn: Callable[[str], None],
) -> list[dict[str, Any]]:
    from nnunet_pde.metrics.evaluate import EvaluationError, evaluate_folders

    per_case: list[dict[str, Any]] = []
    for c in plan.conditions.values():
        for folder, fold in c.sources:
            where = f" fold {fold}" if fold is not None else ""
            print_fn(f"evaluating {c.trainer} {c.key}{where} ({folder} vs {c.reference})")
            try:
                rows, _ = evaluate_folders(
                    folder,
                    c.reference,
                    dataset_json=c.dataset_json,
                    num_workers=num_workers,
                    tolerance_mm=tolerance_mm,
                    progress=progress,
                    policy=policy,
                    allow_missing_predictions=True,
                    write=False,
                )
            except EvaluationError as exc:
                raise BenchmarkError(f"evaluating {folder} against {c.reference}: {exc}") from None
            per_case.extend(
                {
                    "trainer": c.trainer,
                    "curve": c.curve,
                    "condition": c.key,
                    "level": c.level,
                    "level_label": c.label,
                    "fold": "" if fold is None else fold,
                    **r,
                }
                for r in rows
            )
    return per_case


def _summarise(
    plan: _Plan,
    per_case: Sequence[Mapping[str, Any]],
    metrics: Sequence[str],
    policy: ImputationPolicy,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Summary rows (trainer x curve x region x metric x level) and AUC rows."""
    by_cond: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    regions: list[str] = []
    for r in per_case:
        by_cond.setdefault((str(r["trainer"]), str(r["condition"])), []).append(r)
        if r["region"] not in regions:
            regions.append(str(r["region"]))
    stats = {k: aggregate(rows, policy, metrics=metrics)["regions"] for k, rows in by_cond.items()}

    summary: list[dict[str, Any]] = []
    auc_rows: list[dict[str, Any]] = []
    for curve in plan.curves:
        levels = [lv for lv, _ in curve.points]
        clean_point = next(k for lv, k in curve.points if lv == plan.clean_level)
        for t in plan.trainers:
            clean_key = plan.conditions[(t, clean_point)].key
            for region in regions:
                for m in metrics:
                    clean_st = stats[(t, clean_key)][region]["metrics"][m]
                    means = []
                    for lv, point in curve.points:
                        cond = plan.conditions[(t, point)]
                        reg = stats[(t, cond.key)][region]
                        st = reg["metrics"][m]
                        means.append(st["mean"])
                        summary.append(
                            {
                                "trainer": t,
                                "curve": curve.id,
                                "group": curve.group,
                                "level": lv,
                                "level_label": cond.label,
                                "condition": cond.key,
                                "region": region,
                                "labels": reg["labels"],
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
                                "clean_mean": clean_st["mean"],
                                "drop": relative_drop(clean_st["mean"], st["mean"], m),
                                "drop_kind": drop_kind(m),
                            }
                        )
                    auc = severity_auc(levels, means)
                    auc_rows.append(
                        {
                            "trainer": t,
                            "curve": curve.id,
                            "group": curve.group,
                            "axis": plan.axis,
                            "region": region,
                            "metric": m,
                            "levels": ";".join(f"{lv:g}" for lv in levels),
                            "n_levels": len(levels),
                            "x_min": min(levels),
                            "x_max": max(levels),
                            "clean_level": plan.clean_level,
                            "clean_mean": clean_st["mean"],
                            "auc": auc,
                            "auc_drop": relative_drop(clean_st["mean"], auc, m),
                            "drop_kind": drop_kind(m),
                        }
                    )
    return summary, auc_rows


# ------------------------------------------------------------------------------ rendering


def _cell(r: Mapping[str, Any], digits: int, clean_level: float) -> str:
    text = _num(r["mean"], digits)
    if r["level"] == clean_level or not math.isfinite(r["drop"]):
        return text
    if r["drop_kind"] == "relative":
        return f"{text} ({-r['drop'] * 100 + 0.0:+.1f} %)"  # + 0.0: no "-0.0"
    return f"{text} ({r['drop'] + 0.0:+.{digits}f})"


def _curve_table(
    plan: _Plan,
    curve: Curve,
    metric: str,
    summary: Sequence[Mapping[str, Any]],
    auc: Sequence[Mapping[str, Any]],
) -> str:
    digits = METRIC_INFO[metric][1]
    labels = {lv: plan.conditions[(plan.trainers[0], key)].label for lv, key in curve.points}
    header = ["region", "trainer", *(labels[lv] for lv, _ in curve.points), "AUC"]
    rows = []
    regions = list(dict.fromkeys(r["region"] for r in summary))
    for region in regions:
        for t in plan.trainers:
            cells = {
                r["level"]: _cell(r, digits, plan.clean_level)
                for r in summary
                if r["curve"] == curve.id
                and r["trainer"] == t
                and r["region"] == region
                and r["metric"] == metric
            }
            a = next(
                r["auc"]
                for r in auc
                if r["curve"] == curve.id
                and r["trainer"] == t
                and r["region"] == region
                and r["metric"] == metric
            )
            rows.append(
                [region, t, *(cells.get(lv, "") for lv, _ in curve.points), _num(a, digits)]
            )
    return _md_table(header, rows)


def _auc_overview_table(
    plan: _Plan, curves: Sequence[Curve], metric: str, auc: Sequence[Mapping[str, Any]]
) -> str:
    digits = METRIC_INFO[metric][1]
    header = ["region", "trainer", *(c.id for c in curves)]
    rows = []
    regions = list(dict.fromkeys(r["region"] for r in auc))
    for region in regions:
        for t in plan.trainers:
            vals = {
                r["curve"]: _num(r["auc"], digits)
                for r in auc
                if r["trainer"] == t and r["region"] == region and r["metric"] == metric
            }
            rows.append([region, t, *(vals.get(c.id, "") for c in curves)])
    return _md_table(header, rows)


def _groups(plan: _Plan) -> list[tuple[str, list[Curve]]]:
    order: dict[str, list[Curve]] = {}
    for c in plan.curves:
        order.setdefault(c.group, []).append(c)
    return list(order.items())


def render_markdown(
    plan: _Plan,
    summary: Sequence[Mapping[str, Any]],
    auc: Sequence[Mapping[str, Any]],
    metrics: Sequence[str],
    meta: Mapping[str, Any],
) -> str:
    """``tables.md``: per curve and metric a table (rows trainers, columns levels, then AUC)."""
    imp = meta["imputation"]
    imp_text = imp["policy"] + (
        f" ({imp['worst_value_mm']} mm)" if imp.get("worst_value_mm") is not None else ""
    )
    parts = [
        f"# {plan.title}",
        "",
        f"x axis: **{plan.axis}**; the clean point is {plan.clean_level:g}. {meta['how']}",
        "",
        "Cells: mean over cases, and in parentheses the change from the clean point: relative "
        "(%) for Dice-like metrics, absolute (mm) for distances. AUC: trapezoid area under the "
        "mean-versus-level curve over the levels shown (clean point included), divided by the "
        "span of those levels, so a flat curve has AUC = its value (same unit as the metric).",
        "",
        f"Infinite distances (one mask empty): {imp_text}; undefined values (both masks empty) "
        f"are left out. NSD tolerance {meta['tolerance_mm']:g} mm.",
        "",
    ]
    if meta["warnings"]:
        parts += ["**Warnings**", ""]
        parts += [f"- {w}" for w in meta["warnings"]]
        parts.append("")
    groups = _groups(plan)
    many = len(plan.curves) > 1
    for group, curves in groups:
        level = "##"
        if group:
            parts += [f"## {_GROUP_HEADINGS.get(group, group)}", ""]
            level = "###"
        if many:
            m = metrics[0]
            parts += [
                f"{level} AUC of {METRIC_INFO[m][0]} per curve",
                "",
                _auc_overview_table(plan, curves, m, auc),
                "",
            ]
        for curve in curves:
            parts += [f"{level} {curve.title}", ""]
            for m in metrics:
                name, _, direction = METRIC_INFO[m]
                parts += [
                    f"{level}# {name}" + (f" ({direction})" if direction else ""),
                    "",
                    _curve_table(plan, curve, m, summary, auc),
                    "",
                ]
                rows = [r for r in summary if r["curve"] == curve.id and r["metric"] == m]
                n_imp = sum(int(r["n_imputed"]) for r in rows)
                n_exc = sum(int(r["n_excluded"]) for r in rows)
                if n_imp or n_exc:
                    parts += [
                        f"Over all cells: {n_imp} infinite value(s) imputed, {n_exc} value(s) "
                        "left out (per cell: n_imputed, n_excluded in summary.csv).",
                        "",
                    ]
    return "\n".join(parts)


def curve_png(
    plan: _Plan, curve: Curve, metric: str, summary: Sequence[Mapping[str, Any]]
) -> bytes:
    """PNG bytes: mean ± SD of ``metric`` versus level, one line per trainer, one panel per region.

    Uses matplotlib's object API with the Agg canvas (no global pyplot state).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [r for r in summary if r["curve"] == curve.id and r["metric"] == metric]
    regions = list(dict.fromkeys(r["region"] for r in rows))
    fig = Figure(figsize=(1.0 + 3.6 * len(regions), 3.8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(regions), squeeze=False)[0]
    name = METRIC_INFO[metric][0]
    levels = [lv for lv, _ in curve.points]
    for ax, region in zip(axes, regions, strict=True):
        for t in plan.trainers:
            rr = sorted(
                (r for r in rows if r["trainer"] == t and r["region"] == region),
                key=lambda r: r["level"],
            )
            x = [r["level"] for r in rr]
            y = np.asarray([r["mean"] for r in rr], dtype=np.float64)
            sd = np.nan_to_num(np.asarray([r["sd"] for r in rr], dtype=np.float64))
            ax.errorbar(x, y, yerr=sd, marker="o", capsize=3, label=_short(t), alpha=0.9)
        if len(levels) <= 8:
            ax.set_xticks(levels)
            ax.set_xticklabels([f"{lv:g}" for lv in levels], fontsize=8)
        ax.set_title(region, fontsize=10)
        ax.set_xlabel(plan.axis, fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"{name} (mean ± SD)")
    axes[-1].legend(fontsize=7)
    fig.suptitle(curve.title, fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def format_auc_overview(outcome: RobustnessOutcome, metric: str | None = None) -> str:
    """Text lines: AUC of ``metric`` (default: the first) per curve, trainer and region."""
    metric = metric or outcome.meta["metrics"][0]
    digits = METRIC_INFO[metric][1]
    lines = [f"AUC of {METRIC_INFO[metric][0]} (x axis: {outcome.meta['axis']}):"]
    rows = [r for r in outcome.auc if r["metric"] == metric]
    width = max((len(f"{r['curve']}  {r['trainer']}  {r['region']}") for r in rows), default=0)
    for r in rows:
        head = f"{r['curve']}  {r['trainer']}  {r['region']}"
        lines.append(f"  {head.ljust(width)}  {_num(r['auc'], digits)}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------- driver


def _finish(
    plan: _Plan,
    out: Path,
    overwrite: bool,
    metrics: Sequence[str],
    policy: ImputationPolicy,
    tolerance_mm: float,
    num_workers: int | None,
    progress: bool,
    print_fn: Callable[[str], None],
) -> RobustnessOutcome:
    """Evaluate every condition of ``plan``, summarise, and write the outputs into ``out``."""
    from nnunet_pde.metrics.evaluate import CSV_COLUMNS

    plan.warnings.extend(_case_set_warnings(plan))
    for w in plan.warnings:
        print_fn(f"warning: {w}")
    per_case = _evaluate(plan, tolerance_mm, policy, num_workers, progress, print_fn)
    summary, auc = _summarise(plan, per_case, metrics, policy)
    meta: dict[str, Any] = {
        "kind": f"nnunet_pde benchmark robustness {plan.regime}",
        "regime": plan.regime,
        "dataset": plan.dataset,
        "trainers": list(plan.trainers),
        "axis": plan.axis,
        "clean_level": plan.clean_level,
        "metrics": list(metrics),
        "tolerance_mm": float(tolerance_mm),
        "imputation": policy.as_dict(),
        **plan.meta,
        "curves": [
            {
                "id": c.id,
                "title": c.title,
                "group": c.group,
                "points": [{"level": lv, "condition": k} for lv, k in c.points],
                **c.info,
            }
            for c in plan.curves
        ],
        "conditions": [c.as_dict() for c in plan.conditions.values()],
        "warnings": list(plan.warnings),
        "software": software_versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }

    _check_output(out, overwrite)
    previous = out / ROBUSTNESS_JSON
    if previous.is_file():  # --overwrite: remove what the previous run wrote, nothing else
        try:
            old = json.loads(previous.read_text()).get("files", [])
        except (json.JSONDecodeError, AttributeError):
            old = []
        for f in [*old, *ROBUSTNESS_FILES]:
            p = out / Path(str(f)).name
            if p.is_file():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def put(fname: str, writer: Callable[[Path], None]) -> None:
        path = out / fname
        writer(path)
        written.append(path)

    case_cols = ("trainer", "curve", "condition", "level", "level_label", "fold", *CSV_COLUMNS)
    put(PER_CASE_CSV, lambda p: _write_csv(p, per_case, case_cols))
    put(SUMMARY_CSV, lambda p: _write_csv(p, summary, SUMMARY_COLUMNS))
    put(AUC_CSV, lambda p: _write_csv(p, auc, AUC_COLUMNS))
    put(
        TABLES_MD,
        lambda p: p.write_text(
            render_markdown(plan, summary, auc, metrics, meta), encoding="utf-8"
        ),
    )
    for curve in plan.curves:
        for m in metrics:
            png = curve_png(plan, curve, m, summary)
            put(f"{_slug(curve.id)}_{m}.png", lambda p, png=png: p.write_bytes(png))
    files = [p.name for p in written] + [ROBUSTNESS_JSON]
    put(
        ROBUSTNESS_JSON,
        lambda p: write_json(
            p,
            json_safe({**meta, "files": files, "summary": summary, "auc": auc}),
            allow_nan=False,
        ),
    )
    return RobustnessOutcome(plan.regime, out, written, per_case, summary, auc, meta, plan.warnings)


def _common_setup(
    trainers: Sequence[str], folds: Sequence[int | str], metrics: Sequence[str]
) -> tuple[list[str], list[int], list[str]]:
    return check_trainer_names(trainers), parse_folds(folds), _check_metrics(metrics)


def _preprocessed_dataset_json(pre: Path, raw: Path | None, name: str) -> Path:
    for folder in (pre / name, *((raw / name,) if raw is not None else ())):
        if (folder / "dataset.json").is_file():
            return folder / "dataset.json"
    raise BenchmarkError(
        f"no dataset.json for {name} in {pre / name}"
        + (f" or {raw / name}" if raw is not None else "")
        + f" (nnUNetv2_plan_and_preprocess -d {dataset_id(name)} copies it)"
    )


# ----------------------------------------------------------------------------- few labels


def _parse_fractions(fractions: Sequence[int | float | str]) -> list[int]:
    out: list[int] = []
    for f in fractions:
        try:
            v = float(f)
        except (TypeError, ValueError):
            v = float("nan")
        if not math.isfinite(v) or not v.is_integer() or not 1 <= v <= 100:
            raise BenchmarkError(
                f"label fractions are whole percentages from 1 to 100, as in the _FracNN "
                f"trainers (e.g. --fractions 5 10 25 50), got '{f}'"
            )
        if int(v) in out:
            raise BenchmarkError(f"label fraction {int(v)} is listed twice")
        out.append(int(v))
    return sorted(p for p in out if p != 100)


def few_label_trainer(trainer: str, percent: int) -> str:
    """``<trainer>_FracNN`` for a percentage below 100, ``trainer`` itself for 100."""
    return trainer if percent == 100 else f"{trainer}_Frac{percent:02d}"


def robustness_few_labels(
    dataset: str | int,
    trainers: Sequence[str],
    fractions: Sequence[int | float | str] = (5, 10, 25, 50),
    configuration: str = "3d_fullres",
    plans: str = "nnUNetPlans",
    folds: Sequence[int | str] = (0, 1, 2, 3, 4),
    output: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    tolerance_mm: float = 1.0,
    policy: ImputationPolicy | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    num_workers: int | None = None,
    progress: bool = True,
    environ: Mapping[str, str] | None = None,
    print_fn: Callable[[str], None] = print,
) -> RobustnessOutcome:
    """Metric versus label fraction: ``<T>_FracNN`` for every NN, and ``<T>`` as 100 %.

    Parameters
    ----------
    dataset
        Dataset id or ``DatasetNNN_Name``.
    trainers
        Base trainers (``nnUNetTrainerPDE3D``), not the ``_FracNN`` names.
    fractions
        Percentages of the ``_FracNN`` trainers (100 % = the base trainer is always added).
    configuration, plans, folds
        Which model folders and folds to pool.
    output, overwrite
        Output folder (default ``$nnUNet_results/<dataset>/nnunet_pde_robustness/few-labels``)
        and whether a non-empty one may be written into.
    tolerance_mm, policy, metrics
        NSD tolerance, imputation of infinite distances, metrics in the tables and figures.
    num_workers, progress
        Evaluation processes and progress bars.
    environ, print_fn
        Environment with the nnU-Net folder variables (default ``os.environ``); progress lines.

    Returns
    -------
    RobustnessOutcome

    Raises
    ------
    BenchmarkError
        Bad arguments, or a model without any validation prediction (the message gives the
        command that trains it).
    FileExistsError
        ``output`` is not empty and ``overwrite`` is False (checked before any evaluation).
    """
    env = os.environ if environ is None else environ
    policy = policy or ImputationPolicy()
    trainers, fold_list, metrics = _common_setup(trainers, folds, metrics)
    percents = _parse_fractions(fractions)
    bad = [t for t in trainers if re.search(r"_Frac\d+$", t)]
    if bad:
        raise BenchmarkError(
            f"pass the base trainers, not the few-label ones ({', '.join(bad)}): the _FracNN "
            "names are made from --trainers and --fractions"
        )
    results = require_env_folder("nnUNet_results", env)
    preprocessed = require_env_folder("nnUNet_preprocessed", env)
    name = resolve_dataset_name(dataset, env)
    pre = preprocessed / name
    gt = pre / "gt_segmentations"
    if not gt.is_dir():
        raise BenchmarkError(
            f"{gt} does not exist: nnU-Net writes the reference segmentations there during "
            f"nnUNetv2_plan_and_preprocess -d {dataset_id(name)}"
        )
    ds_json = _preprocessed_dataset_json(preprocessed, None, name)
    file_ending = str(json.loads(ds_json.read_text()).get("file_ending", ".nii.gz"))
    out = Path(output) if output is not None else results / name / ROBUSTNESS_DIRNAME / "few-labels"
    _check_output(out, overwrite)

    from nnunet_pde.robustness.subsets import SUBSET_FILE

    splits = read_splits(pre)
    warnings: list[str] = []
    conditions: dict[tuple[str, str], Condition] = {}
    missing: list[str] = []
    seeds: dict[tuple[int, int], dict[str, Any]] = {}
    no_record: list[str] = []
    for t in trainers:
        for pct in [*percents, 100]:
            model = few_label_trainer(t, pct)
            pooled = _pool_oof(
                results, name, model, plans, configuration, fold_list, file_ending, splits, warnings
            )
            folder = results / name / trainer_dir_name(model, plans, configuration)
            if pooled is None:
                missing.append(
                    f"  {model}: no predictions in {folder}/fold_*/validation for folds "
                    f"{', '.join(map(str, fold_list))}; train them with\n"
                    + _train_hint(name, model, configuration, plans, fold_list)
                )
                continue
            sources, cases, pool_info = pooled
            subsets: dict[str, Any] = {}
            if pct < 100:
                for _, k in sources:
                    rec_path = fold_dir(results, name, model, plans, configuration, k) / SUBSET_FILE
                    if not rec_path.is_file():
                        no_record.append(f"{model}/fold_{k}")
                        continue
                    rec = json.loads(rec_path.read_text())
                    subsets[str(k)] = {
                        key: rec.get(key) for key in ("fraction", "seed", "n_total", "n_selected")
                    }
                    frac = rec.get("fraction")
                    if not isinstance(frac, int | float) or abs(float(frac) - pct / 100) > 1e-6:
                        warnings.append(
                            f"{rec_path} records fraction {frac}, not {pct / 100:g} as the "
                            f"trainer name {model} says"
                        )
                    seen = seeds.setdefault((pct, int(k)), {})
                    seen[t] = rec.get("seed")
            conditions[(t, f"frac{pct}")] = Condition(
                key=model,
                trainer=t,
                curve="label-fraction",
                level=pct / 100,
                label=f"{pct} %",
                sources=sources,
                reference=gt,
                dataset_json=ds_json,
                cases=cases,
                info={"pooling": pool_info, "subsets": subsets},
            )
    if missing:
        raise BenchmarkError(
            "no out-of-fold validation predictions for these models; train them first:\n"
            + "\n".join(missing)
        )
    if no_record:
        warnings.append(
            f"no {SUBSET_FILE} in {len(no_record)} few-label fold folder(s) "
            f"({', '.join(no_record[:5])}): the training subsets cannot be confirmed"
        )
    for (pct, k), by_trainer in sorted(seeds.items()):
        if len(set(map(str, by_trainer.values()))) > 1:
            warnings.append(
                f"{pct} % fold {k}: the trainers used different subset seeds "
                f"({', '.join(f'{t}: {s}' for t, s in by_trainer.items())}), so they were "
                "trained on different cases"
            )
    curve = Curve(
        id="label-fraction",
        title=f"Few labels: metric versus label fraction ({name})",
        points=[(p / 100, f"frac{p}") for p in [*percents, 100]],
    )
    plan = _Plan(
        regime="few-labels",
        title=f"Robustness to few labels: {name}",
        dataset=name,
        axis="label fraction (share of each fold's training cases)",
        clean_level=1.0,
        trainers=trainers,
        conditions=conditions,
        curves=[curve],
        meta={
            "configuration": configuration,
            "plans": plans,
            "folds": fold_list,
            "fractions_percent": [*percents, 100],
            "reference_folder": str(gt),
            "how": (
                "Each trainer T at fraction NN % is the model T_FracNN (trained on a nested, "
                "seeded NN % subset of each fold's training cases), 100 % is T itself; "
                "out-of-fold validation predictions pooled over folds "
                f"{', '.join(map(str, fold_list))} (every case once), scored against "
                f"{gt} (nnU-Net's own validation references)."
            ),
        },
        warnings=warnings,
    )
    return _finish(
        plan, out, overwrite, metrics, policy, tolerance_mm, num_workers, progress, print_fn
    )


# --------------------------------------------------------------------------- noisy labels


#: Fields of a noisy-labels record copied into ``robustness.json`` (not the per-case lists).
_DERIVED_KEYS = ("mode", "magnitude_mm", "fraction", "seed", "labels", "num_corrupted")


def _read_derived(raw_ds: Path) -> dict[str, Any] | None:
    """The checked noisy-labels record of a raw dataset folder, or None for a clean dataset."""
    path = raw_ds / DERIVED_JSON
    try:
        info = read_derived_info(raw_ds)
    except ValueError as exc:
        raise BenchmarkError(str(exc)) from None
    if info is None:
        return None
    if info.get("kind") != "noisy-labels":
        raise BenchmarkError(
            f"{path} describes a '{info.get('kind')}' dataset, not a 'noisy-labels' one made by "
            "nnunet-pde derive noisy-labels"
        )
    for key in ("mode", "magnitude_mm", "source"):
        if key not in info:
            raise BenchmarkError(f"{path} has no '{key}' (expected from nnunet-pde derive)")
    try:
        info["magnitude_mm"] = float(info["magnitude_mm"])
    except (TypeError, ValueError):
        raise BenchmarkError(f"{path}: magnitude_mm must be a number") from None
    src = info["source"]
    info["source_name"] = str(src.get("name") if isinstance(src, Mapping) else src)
    return info


def robustness_noisy_labels(
    datasets: Sequence[str | int],
    trainers: Sequence[str],
    configuration: str = "3d_fullres",
    plans: str = "nnUNetPlans",
    folds: Sequence[int | str] = (0, 1, 2, 3, 4),
    output: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    tolerance_mm: float = 1.0,
    policy: ImputationPolicy | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    num_workers: int | None = None,
    progress: bool = True,
    environ: Mapping[str, str] | None = None,
    print_fn: Callable[[str], None] = print,
) -> RobustnessOutcome:
    """Metric versus label-noise magnitude, always scored against the clean labels.

    Parameters
    ----------
    datasets
        The clean dataset (no ``nnunet_pde_derived.json``; magnitude 0) and datasets derived
        from it by ``nnunet-pde derive noisy-labels``, as ids or names, in any order. Each
        corruption mode (and fraction of corrupted cases, if not 1) is its own curve.
    trainers
        Trainers trained on every one of the datasets.
    configuration, plans, folds, output, overwrite, tolerance_mm, policy, metrics, num_workers,
    progress, environ, print_fn
        As for :func:`robustness_few_labels`; the default output folder is
        ``$nnUNet_results/<clean dataset>/nnunet_pde_robustness/noisy-labels``.

    Returns
    -------
    RobustnessOutcome

    Raises
    ------
    BenchmarkError
        No clean dataset or more than one, a derived dataset of another source, two datasets
        at the same (mode, magnitude), missing clean labels, different label definitions, or
        a model without predictions (the message gives the training command).
    FileExistsError
        ``output`` is not empty and ``overwrite`` is False.
    """
    from nnunet_pde.metrics.evaluate import regions_from_dataset_json

    env = os.environ if environ is None else environ
    policy = policy or ImputationPolicy()
    trainers, fold_list, metrics = _common_setup(trainers, folds, metrics)
    if not datasets:
        raise BenchmarkError("no datasets given (--datasets CLEAN NOISY1 NOISY2 ...)")
    results = require_env_folder("nnUNet_results", env)
    preprocessed = require_env_folder("nnUNet_preprocessed", env)
    raw = require_env_folder("nnUNet_raw", env)
    names = [resolve_dataset_name(d, env) for d in datasets]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise BenchmarkError(f"dataset(s) listed twice: {', '.join(dup)}")

    derived = {n: _read_derived(raw / n) for n in names}
    clean = [n for n, d in derived.items() if d is None]
    if len(clean) != 1:
        sources = sorted({d["source_name"] for d in derived.values() if d is not None})
        raise BenchmarkError(
            (
                "no clean dataset in --datasets: add the source the noisy ones were derived "
                f"from ({', '.join(sources)}); it is the magnitude-0 point of every curve"
            )
            if not clean
            else f"more than one clean dataset (no {DERIVED_JSON}) in --datasets: "
            f"{', '.join(clean)}; give exactly one"
        )
    clean_name = clean[0]
    others = [n for n in names if n != clean_name]
    wrong = [
        f"{n} (from {d['source_name']})"
        for n in others
        if (d := derived[n]) is not None and d["source_name"] != clean_name
    ]
    if wrong:
        raise BenchmarkError(
            f"these datasets were not derived from the clean dataset {clean_name}: "
            f"{', '.join(wrong)}"
        )

    ds_jsons = {n: _preprocessed_dataset_json(preprocessed, raw, n) for n in names}
    clean_ds = json.loads(ds_jsons[clean_name].read_text())
    file_ending = str(clean_ds.get("file_ending", ".nii.gz"))
    clean_regions = regions_from_dataset_json(clean_ds)
    for n in others:
        if regions_from_dataset_json(json.loads(ds_jsons[n].read_text())) != clean_regions:
            raise BenchmarkError(
                f"{ds_jsons[n]} defines other labels or regions than {ds_jsons[clean_name]}; "
                "a derived dataset must keep the labels of its source"
            )

    refs: dict[str, Path] = {}
    if (raw / clean_name / "labelsTr").is_dir():
        refs[clean_name] = raw / clean_name / "labelsTr"
    elif (preprocessed / clean_name / "gt_segmentations").is_dir():
        refs[clean_name] = preprocessed / clean_name / "gt_segmentations"
    else:
        raise BenchmarkError(
            f"no clean labels for {clean_name}: neither {raw / clean_name / 'labelsTr'} nor "
            f"{preprocessed / clean_name / 'gt_segmentations'} exists"
        )
    for n in others:
        r = raw / n / CLEAN_LABELS_DIR
        if not r.is_dir():
            raise BenchmarkError(
                f"{r} does not exist: a noisy-labels dataset keeps its clean labels there, and "
                "they are what it is scored against (never its noisy labelsTr); derive it again "
                "with nnunet-pde derive noisy-labels"
            )
        refs[n] = r

    # Curves: one per (mode, fraction of corrupted cases).
    curve_of: dict[str, str] = {}
    curve_info: dict[str, dict[str, Any]] = {}
    for n in others:
        d = derived[n]
        assert d is not None
        frac = float(d.get("fraction", 1.0) or 1.0)
        cid = str(d["mode"]) if frac == 1.0 else f"{d['mode']}_cases{frac:g}"
        curve_of[n] = cid
        curve_info.setdefault(cid, {"mode": d["mode"], "fraction": frac, "datasets": {}})
        if d["magnitude_mm"] <= 0:
            raise BenchmarkError(
                f"{n} has magnitude_mm {d['magnitude_mm']:g}; only the clean dataset is magnitude 0"
            )
        taken = curve_info[cid]["datasets"]
        for other, mag in taken.items():
            if mag == d["magnitude_mm"]:
                raise BenchmarkError(
                    f"{other} and {n} are both {cid} at {mag:g} mm; keep one of them"
                )
        taken[n] = d["magnitude_mm"]

    out = (
        Path(output)
        if output is not None
        else results / clean_name / ROBUSTNESS_DIRNAME / "noisy-labels"
    )
    _check_output(out, overwrite)

    warnings: list[str] = []
    clean_splits = read_splits(preprocessed / clean_name)
    for n in others:
        s = read_splits(preprocessed / n)
        if s is not None and clean_splits is not None and s != clean_splits:
            warnings.append(
                f"splits_final.json of {n} differs from {clean_name}'s: the folds validate "
                "different cases"
            )
    conditions: dict[tuple[str, str], Condition] = {}
    missing: list[str] = []
    for t in trainers:
        for n in names:
            splits = read_splits(preprocessed / n)
            pooled = _pool_oof(
                results, n, t, plans, configuration, fold_list, file_ending, splits, warnings
            )
            if pooled is None:
                folder = results / n / trainer_dir_name(t, plans, configuration)
                missing.append(
                    f"  {n} {t}: no predictions in {folder}/fold_*/validation; train them with\n"
                    + _train_hint(n, t, configuration, plans, fold_list)
                )
                continue
            sources, cases, pool_info = pooled
            d = derived[n]
            conditions[(t, n)] = Condition(
                key=n,
                trainer=t,
                curve=CLEAN if d is None else curve_of[n],
                level=0.0 if d is None else d["magnitude_mm"],
                label="0 mm (clean)" if d is None else f"{d['magnitude_mm']:g} mm",
                sources=sources,
                reference=refs[n],
                dataset_json=ds_jsons[n],
                cases=cases,
                info={
                    "pooling": pool_info,
                    "derived": None
                    if d is None
                    else {
                        "source": d["source_name"],
                        **{k: d[k] for k in _DERIVED_KEYS if k in d},
                    },
                },
            )
    if missing:
        raise BenchmarkError(
            "no out-of-fold validation predictions for these (dataset, trainer) pairs; train "
            "them first:\n" + "\n".join(missing)
        )
    curves = []
    for cid, info in curve_info.items():
        pts = sorted((mag, n) for n, mag in info["datasets"].items())
        title = f"Noisy labels, {info['mode']}"
        if info["fraction"] != 1.0:
            title += f" on {info['fraction'] * 100:g} % of the cases"
        curves.append(
            Curve(
                id=cid,
                title=title + " (x: magnitude in mm)",
                points=[(0.0, clean_name), *pts],
                info=info,
            )
        )
    plan = _Plan(
        regime="noisy-labels",
        title=f"Robustness to noisy training labels: {clean_name}",
        dataset=clean_name,
        axis="noise magnitude (mm)",
        clean_level=0.0,
        trainers=trainers,
        conditions=conditions,
        curves=curves,
        meta={
            "configuration": configuration,
            "plans": plans,
            "folds": fold_list,
            "datasets": names,
            "clean_dataset": clean_name,
            "references": {n: str(p) for n, p in refs.items()},
            "how": (
                "Each point is the trainer trained on that dataset (the clean one at 0 mm, the "
                "noisy-labels datasets at their magnitude_mm); out-of-fold validation "
                f"predictions pooled over folds {', '.join(map(str, fold_list))}, always "
                f"scored against the CLEAN labels ({refs[clean_name]} for the clean dataset, "
                f"<dataset>/{CLEAN_LABELS_DIR} for a derived one), never the noisy ones."
            ),
        },
        warnings=warnings,
    )
    return _finish(
        plan, out, overwrite, metrics, policy, tolerance_mm, num_workers, progress, print_fn
    )


# -------------------------------------------------------------------------- scanner shift


def read_shift_manifest(shifted: str | os.PathLike[str]) -> dict[str, Any]:
    """The checked ``nnunet_pde_shift.json`` of a ``derive shifted-images`` output folder.

    Raises
    ------
    BenchmarkError
        The file is missing, not JSON, not a ``shifted-images`` manifest, or lacks the source
        dataset, images or perturbations.
    """
    path = Path(shifted) / SHIFT_MANIFEST
    try:
        m = read_manifest(shifted)
    except ValueError as exc:
        raise BenchmarkError(
            f"{exc}; --shifted must be the folder written by nnunet-pde derive shifted-images "
            "SOURCE --output DIR"
        ) from None
    src = m.get("source")
    if not isinstance(src, Mapping) or not src.get("images") or not src.get("dataset"):
        raise BenchmarkError(f"{path}: 'source' must name the dataset and the clean images")
    perts = m.get("perturbations")
    if not isinstance(perts, Mapping) or not perts:
        raise BenchmarkError(f"{path} lists no perturbations")
    return m


_CHANNEL = re.compile(r"^(.+)_\d{4}$")


def _image_cases(folder: Path, file_ending: str) -> list[str]:
    """Case ids of nnU-Net raw images ``CASE_XXXX<file_ending>`` in ``folder``."""
    return sorted(
        {m.group(1) for s in _label_cases(folder, file_ending) if (m := _CHANNEL.match(s))}
    )


def _label_cases(folder: Path, file_ending: str) -> set[str]:
    return set(list_cases(folder, file_ending))


def _prediction_state(
    folder: Path, cases: Sequence[str], file_ending: str, expect: Mapping[str, Any]
) -> tuple[str, str]:
    """(``complete`` | ``missing`` | ``stale``, detail) of one prediction folder."""
    if not folder.is_dir():
        return "missing", "no folder"
    have = _label_cases(folder, file_ending)
    record = folder / PREDICTION_RECORD
    if record.is_file():
        try:
            rec = json.loads(record.read_text())
        except json.JSONDecodeError:
            rec = {}
        diff = [k for k, v in expect.items() if rec.get(k) != v]
        if diff:
            return "stale", ", ".join(f"{k} {rec.get(k)} (now {expect[k]})" for k in diff)
    lacking = [c for c in cases if c not in have]
    if lacking:
        return "missing", f"{len(lacking)} of {len(cases)} case(s) not predicted"
    return "complete", ""


def robustness_scanner_shift(
    dataset: str | int,
    shifted: str | os.PathLike[str],
    trainers: Sequence[str],
    configuration: str = "3d_fullres",
    plans: str = "nnUNetPlans",
    folds: Sequence[int | str] = (0, 1, 2, 3, 4),
    predictions: str | os.PathLike[str] | None = None,
    predict: bool = False,
    device: str | None = None,
    extra_args: Sequence[str] = (),
    predict_command: Sequence[str] = ("nnUNetv2_predict",),
    runner: Callable[[Sequence[str]], int] | None = None,
    output: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    tolerance_mm: float = 1.0,
    policy: ImputationPolicy | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    num_workers: int | None = None,
    progress: bool = True,
    environ: Mapping[str, str] | None = None,
    print_fn: Callable[[str], None] = print,
) -> RobustnessOutcome:
    """Metric versus scanner-shift severity on the test set, per perturbation.

    Parameters
    ----------
    dataset
        Dataset id or name; must be the manifest's source dataset.
    shifted
        Output folder of ``nnunet-pde derive shifted-images`` (with ``nnunet_pde_shift.json``).
    trainers, configuration, plans, folds
        The models: ``nnUNetv2_predict`` ensembles the given folds of each trainer.
    predictions
        Where the predictions are (default ``<shifted>/predictions``):
        ``<predictions>/<trainer>/clean/`` and ``<predictions>/<trainer>/<perturbation>/level<k>/``.
    predict
        Make the missing prediction folders with ``nnUNetv2_predict`` (into a temporary folder
        that is renamed when complete, so an interrupted run is resumed folder by folder).
        Without it, missing predictions are an error that lists the commands.
    device, extra_args, predict_command
        ``-device`` of ``nnUNetv2_predict``, more of its arguments (e.g. ``-npp 1 -nps 1``),
        and the command itself (e.g. a container wrapper).
    runner
        Runs one command and returns its exit code (default :func:`run_command`).
    output, overwrite, tolerance_mm, policy, metrics, num_workers, progress, environ, print_fn
        As for :func:`robustness_few_labels`; the default output folder is
        ``$nnUNet_results/<dataset>/nnunet_pde_robustness/scanner-shift``.

    Returns
    -------
    RobustnessOutcome

    Raises
    ------
    BenchmarkError
        A bad manifest, missing image or label folders, missing predictions (without
        ``predict``), a missing trained fold or a failed ``nnUNetv2_predict``.
    FileExistsError
        ``output`` is not empty and ``overwrite`` is False (checked before predicting).
    """
    env = os.environ if environ is None else environ
    policy = policy or ImputationPolicy()
    trainers, fold_list, metrics = _common_setup(trainers, folds, metrics)
    shifted = Path(shifted).absolute()  # the printed commands must work from anywhere
    manifest = read_shift_manifest(shifted)
    results = require_env_folder("nnUNet_results", env)
    name = resolve_dataset_name(dataset, env)
    src = manifest["source"]
    if str(src["dataset"]) != name:
        raise BenchmarkError(
            f"{shifted / SHIFT_MANIFEST} was derived from {src['dataset']}, not {name}; "
            "pass the dataset the shifted images come from"
        )
    images = Path(str(src["images"]))
    if not src.get("labels"):
        raise BenchmarkError(
            f"{shifted / SHIFT_MANIFEST} records no test labels (source.labels is null), so "
            "the predictions cannot be scored; derive the shifted images from a dataset with "
            "labelsTs"
        )
    labels = Path(str(src["labels"]))
    file_ending = str(src.get("file_ending") or ".nii.gz")
    ds_json = Path(str(src.get("dataset_json") or ""))
    if not ds_json.is_file():
        raw_env = env.get("nnUNet_raw")
        pre_env = env.get("nnUNet_preprocessed")
        ds_json = _preprocessed_dataset_json(
            Path(pre_env) if pre_env else images.parent.parent,
            Path(raw_env) if raw_env else None,
            name,
        )
    for what, folder in (("clean test images", images), ("test labels", labels)):
        if not folder.is_dir():
            raise BenchmarkError(f"the {what} {folder} of {shifted / SHIFT_MANIFEST} do not exist")
    cases = _image_cases(images, file_ending)
    if not cases:
        raise BenchmarkError(f"no *_XXXX{file_ending} images in {images}")
    no_label = sorted(set(cases) - _label_cases(labels, file_ending))
    if no_label:
        raise BenchmarkError(
            f"{len(no_label)} test case(s) have no label in {labels}: {', '.join(no_label[:10])}"
        )

    # Inputs: the clean images, then every perturbation and level of the manifest.
    inputs: list[tuple[str, str, int, Path, bool | None]] = [(CLEAN, CLEAN, 0, images, None)]
    global_levels = [int(k) for k in manifest.get("levels", [])]
    for pert, info in manifest["perturbations"].items():
        info = info if isinstance(info, Mapping) else {}
        lv = sorted(int(k) for k in info.get("levels", {})) or sorted(global_levels)
        if not lv:
            raise BenchmarkError(f"{shifted / SHIFT_MANIFEST}: perturbation {pert} has no levels")
        for k in lv:
            folder = level_folder(shifted, pert, k)
            if not folder.is_dir():
                raise BenchmarkError(
                    f"{folder} does not exist although {SHIFT_MANIFEST} lists it; derive the "
                    "shifted images again (nnunet-pde derive shifted-images)"
                )
            have = _image_cases(folder, file_ending)
            if have != cases:
                raise BenchmarkError(
                    f"{folder} has {len(have)} case(s), the clean images {images} have "
                    f"{len(cases)}; derive the shifted images again"
                )
            inputs.append(
                (f"{pert}/level{k}", pert, k, folder, bool(info.get("covered_by_nnunet", False)))
            )

    out = (
        Path(output)
        if output is not None
        else results / name / ROBUSTNESS_DIRNAME / "scanner-shift"
    )
    _check_output(out, overwrite)
    pred_root = Path(predictions).absolute() if predictions is not None else shifted / "predictions"

    # What exists, what is missing.
    todo: list[tuple[str, str, Path, Path]] = []  # (trainer, key, input, output folder)
    stale: list[str] = []
    for t in trainers:
        expect = {
            "trainer": t,
            "configuration": configuration,
            "plans": plans,
            "folds": fold_list,
        }
        for key, _, _, folder, _ in inputs:
            target = pred_root / t / key
            state, detail = _prediction_state(target, cases, file_ending, expect)
            if state == "stale":
                stale.append(f"  {target}: made with {detail}")
            elif state == "missing":
                todo.append((t, key, folder, target))
    if stale:
        raise BenchmarkError(
            "these prediction folders were made with other settings; delete them (or use "
            "--predictions DIR) and run again:\n" + "\n".join(stale)
        )
    if todo and not predict:
        lines = [
            "  "
            + shlex.join(
                build_predict_command(
                    i,
                    o,
                    name,
                    configuration,
                    plans,
                    t,
                    fold_list,
                    device,
                    extra_args,
                    predict_command,
                )
            )
            for t, _, i, o in todo
        ]
        raise BenchmarkError(
            f"{len(todo)} prediction folder(s) are missing or incomplete under {pred_root}; "
            "rerun with --predict to make them, or run:\n" + "\n".join(lines)
        )
    if todo:
        _predict_missing(
            todo,
            name,
            configuration,
            plans,
            fold_list,
            device,
            extra_args,
            predict_command,
            runner if runner is not None else run_command,
            results,
            cases,
            file_ending,
            env,
            print_fn,
        )

    conditions: dict[tuple[str, str], Condition] = {}
    for t in trainers:
        for key, pert, k, _, _ in inputs:
            target = pred_root / t / key
            conditions[(t, key)] = Condition(
                key=key,
                trainer=t,
                curve=CLEAN if pert == CLEAN else pert,
                level=float(k),
                label="clean" if pert == CLEAN else f"level {k}",
                sources=[(target, None)],
                reference=labels,
                dataset_json=ds_json,
                cases={c: None for c in _label_cases(target, file_ending)},
            )
    curves: list[Curve] = []
    perts = list(dict.fromkeys(p for _, p, _, _, _ in inputs if p != CLEAN))
    covered = {p: c for _, p, _, _, c in inputs if p != CLEAN}
    for group in ("covered_by_nnunet", "not_covered_by_nnunet"):
        for p in perts:
            if covered[p] != (group == "covered_by_nnunet"):
                continue
            info = manifest["perturbations"][p]
            info = info if isinstance(info, Mapping) else {}
            curves.append(
                Curve(
                    id=p,
                    title=f"Scanner shift, {p}"
                    + (f": {info['description']}" if info.get("description") else ""),
                    points=[(0.0, CLEAN)]
                    + [(float(k), key) for key, q, k, _, _ in inputs if q == p],
                    group=group,
                    info={
                        "covered_by_nnunet": covered[p],
                        "levels": info.get("levels", {}),
                    },
                )
            )
    plan = _Plan(
        regime="scanner-shift",
        title=f"Robustness to scanner shift: {name}",
        dataset=name,
        axis="severity level (0 = clean test images)",
        clean_level=0.0,
        trainers=trainers,
        conditions=conditions,
        curves=curves,
        meta={
            "configuration": configuration,
            "plans": plans,
            "folds": fold_list,
            "shifted": str(shifted),
            "predictions": str(pred_root),
            "manifest": json_safe(manifest),
            "covered_by_nnunet": [p for p in perts if covered[p]],
            "not_covered_by_nnunet": [p for p in perts if not covered[p]],
            "how": (
                "Each point is the test-set prediction (nnUNetv2_predict, ensemble of folds "
                f"{', '.join(map(str, fold_list))}) of the clean images (level 0, {images}) or "
                f"of one perturbation at one severity level ({shifted}/<perturbation>/"
                f"level<k>), scored against the test labels {labels}. 'Covered' perturbations "
                "are ones nnU-Net's training augmentation already simulates (noise, blur, "
                "gamma, low resolution); the others are not."
            ),
        },
    )
    return _finish(
        plan, out, overwrite, metrics, policy, tolerance_mm, num_workers, progress, print_fn
    )


def _predict_missing(
    todo: Sequence[tuple[str, str, Path, Path]],
    name: str,
    configuration: str,
    plans: str,
    folds: list[int],
    device: str | None,
    extra_args: Sequence[str],
    predict_command: Sequence[str],
    runner: Callable[[Sequence[str]], int],
    results: Path,
    cases: Sequence[str],
    file_ending: str,
    env: Mapping[str, str],
    print_fn: Callable[[str], None],
) -> None:
    """Run ``nnUNetv2_predict`` for every missing folder, into ``.<folder>.partial`` first."""
    exe = predict_command[0] if predict_command else ""
    if not exe or shutil.which(exe, path=env.get("PATH")) is None:
        raise BenchmarkError(
            f"'{exe}' is not on PATH; activate the environment where nnunetv2 is installed"
        )
    untrained = sorted(
        {
            f"  {t} fold {k}: no {fold_dir(results, name, t, plans, configuration, k)}"
            f"/checkpoint_final.pth; train it with\n"
            + _train_hint(name, t, configuration, plans, folds)
            for t, _, _, _ in todo
            for k in folds
            if not (
                fold_dir(results, name, t, plans, configuration, k) / "checkpoint_final.pth"
            ).is_file()
        }
    )
    if untrained:
        raise BenchmarkError("cannot predict with untrained folds:\n" + "\n".join(untrained))
    for i, (t, key, inp, target) in enumerate(todo, 1):
        partial = target.with_name(f".{target.name}.partial")
        if partial.exists():
            shutil.rmtree(partial)
        partial.parent.mkdir(parents=True, exist_ok=True)
        cmd = build_predict_command(
            inp, partial, name, configuration, plans, t, folds, device, extra_args, predict_command
        )
        print_fn(f"[{i}/{len(todo)}] predict {t} {key}: {shlex.join(cmd)}")
        rc = runner(cmd)
        if rc != 0:
            raise BenchmarkError(
                f"nnUNetv2_predict failed with exit code {rc} for {t} {key}: {shlex.join(cmd)}; "
                "the folders finished so far are kept, run the same command again to continue"
            )
        lacking = [c for c in cases if not (partial / f"{c}{file_ending}").is_file()]
        if lacking:
            raise BenchmarkError(
                f"nnUNetv2_predict exited with 0 but wrote no prediction for {len(lacking)} "
                f"case(s) into {partial} ({', '.join(lacking[:5])})"
            )
        (partial / PREDICTION_RECORD).write_text(
            json.dumps(
                {
                    "trainer": t,
                    "configuration": configuration,
                    "plans": plans,
                    "folds": folds,
                    "dataset": name,
                    "input": str(inp),
                    "command": list(cmd),
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                },
                indent=2,
            )
            + "\n"
        )
        if target.exists():  # an incomplete folder from an earlier, interrupted run
            shutil.rmtree(target)
        os.replace(partial, target)
