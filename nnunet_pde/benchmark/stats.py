"""Statistics of the benchmark report: bootstrap CIs, paired Wilcoxon tests, Holm correction.

Pure numpy/scipy functions on per-case values (one value per case; ``nan`` = undefined).

* :func:`bootstrap_ci` - percentile bootstrap confidence interval of the mean, resampling
  cases with replacement, from a seeded generator (same input, same seed -> same interval).
* :func:`paired_wilcoxon` - two-sided Wilcoxon signed-rank test of paired per-case values
  (``scipy.stats.wilcoxon``), after dropping pairs in which either value is not finite.
* :func:`holm` - Holm's step-down adjustment of a family of p-values (``nan`` entries are
  not part of the family and stay ``nan``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nnunet_pde.errors import BenchmarkError

__all__ = ["PairedTest", "bootstrap_ci", "holm", "paired_wilcoxon"]


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    n_resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of ``values``.

    Each resample draws ``n`` cases with replacement from the ``n`` finite values; the
    interval is the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of the
    resampled means. Deterministic for a given ``seed`` (``numpy.random.default_rng``).

    Parameters
    ----------
    values
        Per-case values; non-finite entries are dropped first (impute before calling).
    n_resamples
        Number of bootstrap resamples, at least 1.
    confidence
        Coverage of the interval, in (0, 1).
    seed
        Seed of the generator.

    Returns
    -------
    (low, high)
        ``(nan, nan)`` without finite values; ``(x, x)`` for a single value.
    """
    if n_resamples < 1:
        raise BenchmarkError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0.0 < confidence < 1.0:
        raise BenchmarkError(f"confidence must be in (0, 1), got {confidence}")
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples, dtype=np.float64)
    # Chunks bound the memory of the (resamples x cases) index array for large datasets.
    chunk = max(1, 2_000_000 // v.size)
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        idx = rng.integers(0, v.size, size=(stop - start, v.size))
        means[start:stop] = v[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


@dataclass(frozen=True)
class PairedTest:
    """Result of :func:`paired_wilcoxon`.

    Attributes
    ----------
    n
        Pairs used (both values finite).
    n_nonzero
        Pairs whose difference is not zero (the ones the signed-rank test ranks).
    mean_difference
        Mean of ``x - y`` over the ``n`` pairs (``nan`` if ``n == 0``).
    statistic
        scipy's statistic (the smaller of the signed-rank sums for the two-sided test).
    pvalue
        Two-sided p-value; 1.0 when every difference is zero, ``nan`` without pairs.
    """

    n: int
    n_nonzero: int
    mean_difference: float
    statistic: float
    pvalue: float


def paired_wilcoxon(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> PairedTest:
    """Two-sided Wilcoxon signed-rank test of ``x`` against ``y``, paired by position.

    Pairs where either value is ``nan`` or infinite are dropped (impute infinite distances
    before calling if they should count). The test itself is
    ``scipy.stats.wilcoxon(x, y, zero_method="wilcox", alternative="two-sided")`` (exact
    distribution for small samples without ties, normal approximation otherwise). When all
    differences are zero there is no evidence of a difference and the p-value is 1.0.
    """
    from scipy.stats import wilcoxon

    a = np.asarray(x, dtype=np.float64).ravel()
    b = np.asarray(y, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired samples need equal lengths, got {a.size} and {b.size}")
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    n = int(a.size)
    if n == 0:
        nan = float("nan")
        return PairedTest(0, 0, nan, nan, nan)
    d = a - b
    n_nonzero = int(np.count_nonzero(d))
    if n_nonzero == 0:
        return PairedTest(n, 0, 0.0, 0.0, 1.0)
    res = wilcoxon(a, b, zero_method="wilcox", alternative="two-sided")
    return PairedTest(n, n_nonzero, float(d.mean()), float(res.statistic), float(res.pvalue))


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values, in the input order.

    With the ``m`` finite p-values sorted ascending, ``p_(1) <= ... <= p_(m)``, the adjusted
    value of ``p_(i)`` is ``max_{j <= i} min(1, (m - j + 1) * p_(j))``. Rejecting where the
    adjusted value is ``<= alpha`` controls the family-wise error rate at ``alpha``.
    ``nan`` entries (tests that could not be done) are left out of the family and stay ``nan``.
    """
    p = np.asarray(pvalues, dtype=np.float64).ravel()
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(~np.isnan(p))
    m = finite.size
    if m == 0:
        return out
    if np.any((p[finite] < 0) | (p[finite] > 1)):
        raise ValueError(f"p-values must lie in [0, 1], got {p[finite].tolist()}")
    order = finite[np.argsort(p[finite], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def format_p(p: float) -> str:
    """A p-value for tables: 3 significant digits, ``<0.001`` below 0.001, ``n/a`` for nan."""
    if not math.isfinite(p):
        return "n/a"
    if p < 0.001:
        return "<0.001"
    return f"{p:.3f}"
