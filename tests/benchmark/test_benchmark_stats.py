"""Statistics of the benchmark report against hand-computed values and scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from nnunet_pde.benchmark.stats import bootstrap_ci, format_p, holm, paired_wilcoxon


def test_holm_on_known_pvalues() -> None:
    # m = 4, sorted: 0.01*4 = 0.04, 0.02*3 = 0.06, 0.03*2 = 0.06 (running max), 0.04*1 -> 0.06
    p = [0.03, 0.01, 0.04, 0.02]
    np.testing.assert_allclose(holm(p), [0.06, 0.04, 0.06, 0.06])


def test_holm_caps_at_one_keeps_monotone_and_skips_nan() -> None:
    # Finite family of 3: 0.2*3 = 0.6, 0.5*2 = 1.0, 0.9*1 -> max(1.0, 0.9) = 1.0
    out = holm([0.5, float("nan"), 0.2, 0.9])
    assert math.isnan(out[1])
    np.testing.assert_allclose(out[[0, 2, 3]], [1.0, 0.6, 1.0])
    assert np.all(np.isnan(holm([float("nan")])))
    np.testing.assert_allclose(holm([0.004]), [0.004])


def test_holm_matches_the_textbook_step_down_rule() -> None:
    rng = np.random.default_rng(1)
    p = rng.uniform(0, 0.2, size=7)
    adj = holm(p)
    order = np.argsort(p)
    m = len(p)
    expected = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    np.testing.assert_allclose(adj[order], expected)
    with pytest.raises(ValueError, match="p-values"):
        holm([0.5, 1.5])


def test_bootstrap_ci_contains_the_mean_and_is_deterministic() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(0.8, 0.1, size=40)
    lo, hi = bootstrap_ci(x, n_resamples=4000, seed=3)
    assert lo < x.mean() < hi
    assert (lo, hi) == bootstrap_ci(x, n_resamples=4000, seed=3)
    assert (lo, hi) != bootstrap_ci(x, n_resamples=4000, seed=4)
    # The percentile interval of the mean is close to mean +- 1.96 SE for normal data.
    se = x.std(ddof=1) / math.sqrt(x.size)
    assert abs((hi - lo) - 2 * 1.96 * se) < 0.25 * (2 * 1.96 * se)
    # Narrower at lower confidence.
    lo90, hi90 = bootstrap_ci(x, n_resamples=4000, seed=3, confidence=0.9)
    assert lo <= lo90 and hi90 <= hi


def test_bootstrap_ci_edge_cases() -> None:
    assert all(math.isnan(v) for v in bootstrap_ci([]))
    assert all(math.isnan(v) for v in bootstrap_ci([float("nan"), float("inf")]))
    assert bootstrap_ci([0.7]) == (0.7, 0.7)
    assert bootstrap_ci([0.5, 0.5, 0.5]) == (0.5, 0.5)
    # Non-finite entries are dropped before resampling.
    assert bootstrap_ci([0.2, float("nan"), 0.4], seed=1) == bootstrap_ci([0.2, 0.4], seed=1)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci([1.0, 2.0], confidence=1.0)
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_ci([1.0, 2.0], n_resamples=0)


def test_bootstrap_chunking_does_not_change_the_result() -> None:
    # 2e6 // n values per chunk: with n = 500_001, chunks of 3 resamples.
    x = np.random.default_rng(2).normal(size=500_001).astype(np.float64)
    a = bootstrap_ci(x, n_resamples=7, seed=0)
    rng = np.random.default_rng(0)
    means = np.concatenate(
        [x[rng.integers(0, x.size, size=(k, x.size))].mean(axis=1) for k in (3, 3, 1)]
    )
    np.testing.assert_allclose(a, np.quantile(means, [0.025, 0.975]))


def test_wilcoxon_equals_scipy() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(0.85, 0.05, size=25)
    y = x - rng.normal(0.02, 0.03, size=25)
    res = paired_wilcoxon(x, y)
    ref = scipy.stats.wilcoxon(x, y)
    assert res.pvalue == pytest.approx(ref.pvalue, rel=1e-12)
    assert res.statistic == pytest.approx(ref.statistic)
    assert res.n == 25 and res.n_nonzero == 25
    assert res.mean_difference == pytest.approx(float(np.mean(x - y)))


def test_wilcoxon_exact_small_sample_by_hand() -> None:
    # Differences 1..6 all positive: W- = 0; exact two-sided p = 2 / 2^6 = 0.03125.
    x = np.arange(1.0, 7.0) * 2
    y = np.arange(1.0, 7.0)
    res = paired_wilcoxon(x, y)
    assert res.statistic == 0.0
    assert res.pvalue == pytest.approx(2 / 64)


def test_wilcoxon_drops_non_finite_pairs_and_handles_ties() -> None:
    x = [1.0, 2.0, float("nan"), 4.0, 5.0, 7.5, float("inf")]
    y = [0.5, 2.5, 3.0, 3.0, 4.0, 6.0, 1.0]
    res = paired_wilcoxon(x, y)
    ref = scipy.stats.wilcoxon([1.0, 2.0, 4.0, 5.0, 7.5], [0.5, 2.5, 3.0, 4.0, 6.0])
    assert res.n == 5
    assert res.pvalue == pytest.approx(ref.pvalue)
    same = paired_wilcoxon([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert (same.n, same.n_nonzero, same.pvalue, same.mean_difference) == (3, 0, 1.0, 0.0)
    none = paired_wilcoxon([float("nan")], [1.0])
    assert none.n == 0 and math.isnan(none.pvalue)
    with pytest.raises(ValueError, match="equal lengths"):
        paired_wilcoxon([1.0, 2.0], [1.0])


def test_format_p() -> None:
    assert format_p(0.0004) == "<0.001"
    assert format_p(0.04321) == "0.043"
    assert format_p(float("nan")) == "n/a"
