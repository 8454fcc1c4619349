"""Output names, severity AUC and drop, and the plan structures of the robustness report."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nnunet_pde.benchmark.outcome import WrittenOutcome
from nnunet_pde.benchmark.writers import STAT_COLUMNS
from nnunet_pde.metrics.info import METRIC_INFO

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
    *STAT_COLUMNS,
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
        A metric of :data:`nnunet_pde.metrics.METRIC_INFO`.

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
class RobustnessPlan:
    """What one regime evaluates: its conditions (one per trainer and level) and curves."""

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


@dataclass(kw_only=True)
class RobustnessOutcome(WrittenOutcome):
    """What ``benchmark robustness`` produced.

    Attributes
    ----------
    regime
        ``few-labels``, ``noisy-labels`` or ``scanner-shift``.
    output, files, per_case, summary, meta
        As in :class:`~nnunet_pde.benchmark.outcome.WrittenOutcome`: the output folder, every
        file written into it, the rows of ``per_case.csv`` and ``summary.csv``, and the
        content of ``robustness.json`` without the rows.
    auc
        The rows of ``auc.csv``.
    warnings
        Problems that did not stop the report (missing folds, differing case sets ...).
    """

    regime: str
    auc: list[dict[str, Any]]
    warnings: list[str]
