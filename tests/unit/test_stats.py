"""Intervals and tests: scipy's Wilson and exact McNemar against their formulas, and the cluster bootstrap
against resampling clusters by hand."""

import math

import numpy as np
import pytest

from leakage.stats import cluster_bootstrap_mean, mcnemar_exact, percentile_interval, resample, wilson_interval


@pytest.mark.parametrize("correct,total", [(0, 10), (50, 100), (7, 9), (120, 500)])
def test_wilson_matches_its_formula(correct, total):
    z, p = 1.959963984540054, correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    low, high = wilson_interval(correct, total)
    assert low == pytest.approx(max(0.0, centre - half), abs=1e-12)
    assert high == pytest.approx(min(1.0, centre + half), abs=1e-12)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


@pytest.mark.parametrize("b,c", [(10, 0), (3, 7), (5, 5), (0, 0), (40, 25)])
def test_exact_mcnemar_is_the_two_sided_binomial_tail(b, c):
    n, k = b + c, min(b, c)
    expected = 1.0 if n == 0 else min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)
    assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-9)


def test_cluster_bootstrap_resamples_clusters_not_rows():
    rng = np.random.default_rng(0)
    clusters = np.repeat(np.arange(30), 5)  # 30 examples of 5 units each
    scores = rng.random((150, 2)) < 0.4
    low, high = cluster_bootstrap_mean(scores, clusters, n_resamples=400, seed=3)
    draws = resample(30, 400, seed=3)  # by hand: whole clusters drawn with replacement
    by_cluster = scores.reshape(30, 10)
    manual = percentile_interval(by_cluster[draws].reshape(400, -1).mean(1))
    assert (low, high) == pytest.approx(manual, abs=1e-12)
    assert low <= scores.mean() <= high
    assert cluster_bootstrap_mean(np.ones(12), np.arange(12) // 3) == (1.0, 1.0)
    with pytest.raises(ValueError, match="at least one unit"):
        resample(0, 10, 0)
