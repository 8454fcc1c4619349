"""Summaries of per-case metrics over cases, with a named policy for infinite distances.

Per-case values keep their edge-case values (``inf`` when exactly one mask is empty, ``nan``
when a metric is undefined, see docs/evaluation.md). Only here, when summarising over cases,
are infinite distances replaced or dropped, under one of three named policies:

``exclude``
    infinite distances are left out of the summary (and counted in ``n_excluded``).
``worst``
    infinite distances become a fixed value in mm (``worst_value_mm``, e.g. 373.13 in BraTS).
``volume_diagonal``
    infinite distances become the physical diagonal of that case's image in mm (the largest
    distance possible inside the image).

``nan`` values (undefined: both masks empty, precision without prediction, recall without
reference) are never imputed; they are left out under every policy and counted in ``n_nan``,
as nnU-Net's ``nanmean`` does for Dice.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nnunet_pde.metrics.case import DISTANCE_METRICS, STATUSES, SUMMARY_METRICS

__all__ = [
    "IMPUTATION_POLICIES",
    "ImputationPolicy",
    "aggregate",
    "impute",
    "json_safe",
    "summarize",
]

IMPUTATION_POLICIES = ("exclude", "worst", "volume_diagonal")


@dataclass(frozen=True)
class ImputationPolicy:
    """How infinite distances are treated when summarising over cases.

    Parameters
    ----------
    name
        One of :data:`IMPUTATION_POLICIES`.
    worst_value_mm
        The replacement in mm for ``worst``; must be None for the other policies.
    """

    name: str = "volume_diagonal"
    worst_value_mm: float | None = None

    def __post_init__(self) -> None:
        if self.name not in IMPUTATION_POLICIES:
            raise ValueError(
                f"unknown imputation policy '{self.name}'; "
                f"choose one of {', '.join(IMPUTATION_POLICIES)}"
            )
        if self.name == "worst":
            w = self.worst_value_mm
            if w is None or not math.isfinite(w) or w < 0:
                raise ValueError(
                    "imputation policy 'worst' needs worst_value_mm, a finite number >= 0 in mm "
                    f"(e.g. 373.13 as in BraTS), got {w}"
                )
        elif self.worst_value_mm is not None:
            raise ValueError(
                f"worst_value_mm only applies to the policy 'worst', not '{self.name}'"
            )

    def as_dict(self) -> dict[str, Any]:
        return {"policy": self.name, "worst_value_mm": self.worst_value_mm}


def impute(
    values: Sequence[float] | np.ndarray,
    policy: ImputationPolicy,
    diagonals_mm: Sequence[float] | np.ndarray | None = None,
) -> tuple[np.ndarray, int, int]:
    """Apply ``policy`` to the infinite entries of one metric's per-case values.

    Parameters
    ----------
    values
        Per-case values (mm), may contain ``inf`` and ``nan``.
    policy
        The imputation policy.
    diagonals_mm
        Per-case image diagonals in mm, same length as ``values``; needed for
        ``volume_diagonal`` only.

    Returns
    -------
    (kept, n_imputed, n_excluded)
        ``kept``: the finite values after imputation (``nan`` always dropped, ``inf`` dropped
        under ``exclude``); ``n_imputed``: how many ``inf`` were replaced; ``n_excluded``: how
        many ``inf`` were dropped.
    """
    v = np.asarray(values, dtype=np.float64).copy()
    inf = np.isinf(v)
    n_inf = int(inf.sum())
    n_imputed = n_excluded = 0
    if n_inf:
        if policy.name == "exclude":
            n_excluded = n_inf
        elif policy.name == "worst":
            v[inf] = float(policy.worst_value_mm)  # type: ignore[arg-type]
            n_imputed = n_inf
        else:
            if diagonals_mm is None:
                raise ValueError(
                    "imputation policy 'volume_diagonal' needs the per-case image diagonals"
                )
            diag = np.asarray(diagonals_mm, dtype=np.float64)
            if diag.shape != v.shape:
                raise ValueError(
                    f"need one image diagonal per value, got {diag.shape[0]} "
                    f"for {v.shape[0]} values"
                )
            v[inf] = diag[inf]
            n_imputed = n_inf
    return v[np.isfinite(v)], n_imputed, n_excluded


def summarize(values: Sequence[float] | np.ndarray) -> dict[str, float | int]:
    """Descriptive statistics of finite values: mean, SD (ddof=1), median, quartiles, range, n.

    Empty input gives ``nan`` statistics and ``n = 0``; SD needs at least two values.
    """
    v = np.asarray(values, dtype=np.float64)
    n = int(v.size)
    if n == 0:
        nan = float("nan")
        return {
            "mean": nan,
            "std": nan,
            "median": nan,
            "q1": nan,
            "q3": nan,
            "min": nan,
            "max": nan,
            "n": 0,
        }
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return {
        "mean": float(v.mean()),
        "std": float(v.std(ddof=1)) if n > 1 else float("nan"),
        "median": float(med),
        "q1": float(q1),
        "q3": float(q3),
        "min": float(v.min()),
        "max": float(v.max()),
        "n": n,
    }


def aggregate(
    rows: Iterable[Mapping[str, Any]],
    policy: ImputationPolicy | None = None,
    metrics: Sequence[str] = SUMMARY_METRICS,
) -> dict[str, Any]:
    """Summarise per-case rows per region.

    Parameters
    ----------
    rows
        One mapping per (case, region) with the keys ``region``, ``status``, the ``metrics``
        and, for ``volume_diagonal``, ``image_diagonal_mm``; optionally ``labels``.
    policy
        Imputation policy for :data:`DISTANCE_METRICS` (default ``volume_diagonal``).
    metrics
        Which metrics to summarise.

    Returns
    -------
    dict
        ``{"imputation": {...}, "regions": {region: {"labels", "n_cases", "status_counts",
        "metrics": {metric: stats}}}, "foreground_mean": {metric: mean of region means}}``
        where ``stats`` is :func:`summarize` plus ``n_cases``, ``n_nan``, ``n_inf``,
        ``n_imputed`` and ``n_excluded``. Regions keep the order in which they first appear.
    """
    policy = policy or ImputationPolicy()
    by_region: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_region.setdefault(str(row["region"]), []).append(row)

    regions: dict[str, Any] = {}
    for region, rrows in by_region.items():
        status_counts = {s: 0 for s in STATUSES}
        for row in rrows:
            status_counts[str(row["status"])] = status_counts.get(str(row["status"]), 0) + 1
        diag = (
            [float(row["image_diagonal_mm"]) for row in rrows]
            if policy.name == "volume_diagonal"
            else None
        )
        per_metric: dict[str, Any] = {}
        for m in metrics:
            raw = np.asarray([float(row[m]) for row in rrows], dtype=np.float64)
            n_nan = int(np.isnan(raw).sum())
            n_inf = int(np.isinf(raw).sum())
            if m in DISTANCE_METRICS:
                kept, n_imp, n_exc = impute(raw, policy, diag)
            else:
                # Only distances can be inf; anything else non-finite is undefined.
                kept, n_imp, n_exc = raw[np.isfinite(raw)], 0, n_inf
            per_metric[m] = {
                **summarize(kept),
                "n_cases": len(rrows),
                "n_nan": n_nan,
                "n_inf": n_inf,
                "n_imputed": n_imp,
                "n_excluded": n_nan + n_exc,
            }
        regions[region] = {
            "labels": rrows[0].get("labels"),
            "n_cases": len(rrows),
            "status_counts": status_counts,
            "metrics": per_metric,
        }

    # Like nnU-Net's foreground_mean: the unweighted mean of the per-region means.
    foreground_mean: dict[str, float] = {}
    for m in metrics:
        means = [r["metrics"][m]["mean"] for r in regions.values()]
        finite = [x for x in means if math.isfinite(x)]
        foreground_mean[m] = float(np.mean(finite)) if finite else float("nan")

    return {"imputation": policy.as_dict(), "regions": regions, "foreground_mean": foreground_mean}


def json_safe(obj: Any) -> Any:
    """Copy of ``obj`` with non-finite floats as None and numpy scalars as Python numbers.

    Standard JSON has no NaN or Infinity; writing None keeps the file readable by every
    parser (``json.dump(..., allow_nan=False)`` then guarantees it).
    """
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
