"""Repeated trainings: one results tree per run, and the spread between runs.

Two trainings of the same trainer on the same fold differ (initialisation, augmentation and
sampling are random), sometimes by more than the difference between two trainers. A claim
that one trainer beats another therefore needs several runs of each and the spread between
them. ``benchmark run --runs N`` trains runs 1..N of every (trainer, fold), each in its own
results tree; ``benchmark report --runs N`` pools them.

Run trees:

* run 1 is ``$nnUNet_results`` itself, so a grid trained before repeated runs existed is
  run 1 and nothing moves;
* run r >= 2 is ``$nnUNet_results/nnunet_pde_runs/run_<r>``, a complete results root of its
  own (``<that>/<dataset>/<trainer>__<plans>__<configuration>/fold_<k>``). Its trainings get
  ``nnUNet_results`` pointed there; nnU-Net lists only ``Dataset*`` folders in a results
  root, so it does not see the run trees.

Statistics, per (region, trainer, metric), with ``m_r`` the mean over cases of run r (after
the imputation policy):

* ``run_mean``: the mean of the ``m_r`` over runs; ``run_sd``: their SD (ddof=1), the
  between-run spread;
* against the reference trainer: ``run_difference`` = ``run_mean`` - the reference's,
  ``run_difference_se`` = sqrt(sd_t^2/R_t + sd_ref^2/R_ref) from the two spreads, and
  ``p_runs``, Welch's two-sided t test on the two sets of run means (runs of different
  trainers are independent trainings; pairing run r with run r would mean nothing), Holm-
  corrected over trainers within (region, metric) in ``p_runs_holm``;
* ``exceeds_spread``: ``p_runs_holm`` < 0.05, i.e. the difference is larger than the
  between-run spread explains.

The per-case statistics of the report (mean ± SD over cases, bootstrap CI, paired Wilcoxon
with Holm) are computed on each case's value averaged over the runs (:func:`average_runs`).
"""

from __future__ import annotations

import math
import os
import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nnunet_pde.benchmark.pooling import metric_values
from nnunet_pde.benchmark.stats import holm
from nnunet_pde.benchmark.writers import regions_in_order
from nnunet_pde.errors import BenchmarkError
from nnunet_pde.metrics import ImputationPolicy

__all__ = [
    "RUNS_DIRNAME",
    "RUN_COLUMNS",
    "average_runs",
    "parse_runs",
    "run_results",
    "run_spread_rows",
]

#: Sub-folder of ``$nnUNet_results`` that holds the results trees of runs 2, 3, ...
RUNS_DIRNAME = "nnunet_pde_runs"

#: Columns of ``runs.csv``.
RUN_COLUMNS = (
    "region",
    "trainer",
    "metric",
    "n_runs",
    "run_means",
    "run_mean",
    "run_sd",
    "reference",
    "run_difference",
    "run_difference_se",
    "p_runs",
    "p_runs_holm",
    "exceeds_spread",
)


def run_results(results: str | os.PathLike[str], run: int) -> Path:
    """The results root of run ``run`` (1-based): ``results`` for run 1, else
    ``results/nnunet_pde_runs/run_<run>``."""
    if run < 1:
        raise BenchmarkError(f"run indices start at 1, got {run}")
    results = Path(results)
    return results if run == 1 else results / RUNS_DIRNAME / f"run_{run}"


def parse_runs(runs: int | None = None, run: int | None = None) -> list[int]:
    """The run indices of ``--runs N`` (1..N) or ``--run R`` (just R); default [1]."""
    if runs is not None and run is not None:
        raise BenchmarkError("give --runs N (runs 1..N) or --run R (one run), not both", "--run")
    if run is not None:
        if run < 1:
            raise BenchmarkError(f"--run must be >= 1, got {run}", "--run")
        return [run]
    if runs is not None:
        if runs < 1:
            raise BenchmarkError(f"--runs must be >= 1, got {runs}", "--runs")
        return list(range(1, runs + 1))
    return [1]


def average_runs(
    rows: Sequence[Mapping[str, Any]], metrics: Sequence[str], policy: ImputationPolicy
) -> list[dict[str, Any]]:
    """Per-case rows with each metric averaged over the runs (key ``run`` in ``rows``).

    Distances are imputed per run first (an empty prediction in one run costs that run its
    imputed value, not the whole average an infinity); undefined values (``nan``: both masks
    empty) are left out of the average, which is ``nan`` only when every run has none. The
    other fields come from the first run's row; ``n_runs`` says how many runs had the case.
    """
    groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(str(r["trainer"]), str(r["case"]), str(r["region"]))].append(r)
    out = []
    for group in groups.values():
        row = {k: v for k, v in group[0].items() if k != "run"}
        for m in metrics:
            vals = metric_values(group, m, policy)
            finite = vals[~np.isnan(vals)]
            row[m] = float(finite.mean()) if finite.size else float("nan")
        row["n_runs"] = len(group)
        out.append(row)
    return out


def _welch(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided p-value of Welch's t test (nan with fewer than 2 values on a side, or no
    spread on either side)."""
    from scipy import stats

    if a.size < 2 or b.size < 2:
        return float("nan")
    if np.var(a) == 0 and np.var(b) == 0:
        return 1.0 if float(a.mean()) == float(b.mean()) else 0.0
    with warnings.catch_warnings():  # nearly equal run means: scipy warns, the p is still ~1
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def run_spread_rows(
    rows: Sequence[Mapping[str, Any]],
    trainers: Sequence[str],
    reference: str,
    metrics: Sequence[str],
    policy: ImputationPolicy,
) -> list[dict[str, Any]]:
    """One row per (region, trainer, metric): the run means, their spread, and the
    difference from ``reference`` against that spread (module docstring)."""
    regions = regions_in_order(rows)
    means: dict[tuple[str, str, str], dict[int, float]] = defaultdict(dict)
    by_cell: dict[tuple[str, str, int], list[Mapping[str, Any]]] = defaultdict(list)
    for r in rows:
        by_cell[(str(r["trainer"]), str(r["region"]), int(r["run"]))].append(r)
    for (t, region, run), cell in by_cell.items():
        for m in metrics:
            vals = metric_values(cell, m, policy)
            vals = vals[~np.isnan(vals)]
            if vals.size:
                means[(t, region, m)][run] = float(vals.mean())
    out = []
    for region in regions:
        for m in metrics:
            block = []
            ref = np.asarray(sorted(means.get((reference, region, m), {}).items()))
            ref_vals = ref[:, 1] if ref.size else np.empty(0)
            for t in trainers:
                if (t, region, m) not in means:
                    continue
                runs = sorted(means[(t, region, m)].items())
                v = np.asarray([x for _, x in runs], dtype=np.float64)
                sd = float(v.std(ddof=1)) if v.size > 1 else float("nan")
                row: dict[str, Any] = {
                    "region": region,
                    "trainer": t,
                    "metric": m,
                    "n_runs": int(v.size),
                    "run_means": [float(x) for x in v],
                    "run_mean": float(v.mean()),
                    "run_sd": sd,
                    "reference": reference,
                    "run_difference": float("nan"),
                    "run_difference_se": float("nan"),
                    "p_runs": float("nan"),
                    "p_runs_holm": float("nan"),
                    "exceeds_spread": None,
                }
                if t != reference and ref_vals.size:
                    ref_sd = float(ref_vals.std(ddof=1)) if ref_vals.size > 1 else float("nan")
                    row["run_difference"] = float(v.mean() - ref_vals.mean())
                    row["run_difference_se"] = math.sqrt(sd**2 / v.size + ref_sd**2 / ref_vals.size)
                    row["p_runs"] = _welch(v, ref_vals)
                block.append(row)
            adjusted = holm([r["p_runs"] for r in block])
            for r, p in zip(block, adjusted, strict=True):
                r["p_runs_holm"] = float(p)
                if r["trainer"] != reference and not math.isnan(float(p)):
                    r["exceeds_spread"] = bool(p < 0.05)
            out.extend(block)
    return out
