"""Intervals and tests, one place each: Wilson and exact McNemar from `scipy.stats`, and the bootstrap.

* `wilson_interval(correct, total)`: the Wilson score interval of a proportion (`scipy.stats.binomtest`).
* `mcnemar_exact(b, c)`: McNemar's exact two-sided test of paired outcomes from the discordant counts
  (`b` only the first right, `c` only the second): a binomial test of b out of b + c at p = 1/2.
* `resample(n, n_resamples, seed)`: the bootstrap's draws, (n_resamples, n) indices of n independent
  units drawn with replacement; every bootstrap in the package draws through it, so one seed gives one
  set of draws whatever is measured on them.
* `percentile_interval(values)`: the 95% percentile interval of bootstrap statistics.
* `cluster_bootstrap_mean(scores, clusters)`: the interval of a mean score when rows come in clusters
  (digits of one trace, units of one example): clusters are resampled, and each resample's statistic is
  its total score over its total count.
* `mean_interval(values)`: the t interval of a mean over independent units (training seeds).
"""

from __future__ import annotations

import numpy as np
from scipy import stats


def wilson_interval(correct: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of `correct` out of `total` (NaN, NaN for an empty sample)."""
    if total == 0:
        return float("nan"), float("nan")
    interval = stats.binomtest(int(correct), int(total)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(interval.low), float(interval.high)


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value from the discordant pair counts (1.0 when there are none)."""
    if b + c == 0:
        return 1.0
    return float(stats.binomtest(int(min(b, c)), int(b + c), 0.5).pvalue)


def resample(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """(n_resamples, n) indices: bootstrap draws of n units with replacement."""
    if n < 1 or n_resamples < 1:
        raise ValueError(f"the bootstrap needs at least one unit and one resample, got n={n}, "
                         f"n_resamples={n_resamples}")
    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))


def mean_interval(values, confidence: float = 0.95) -> tuple[float, float]:
    """The t interval of the mean of independent values (e.g. one per training seed); NaN for fewer than 2."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float("nan"), float("nan")
    sem = stats.sem(values)
    if sem == 0:
        return float(values.mean()), float(values.mean())
    low, high = stats.t.interval(confidence, len(values) - 1, loc=values.mean(), scale=sem)
    return float(low), float(high)


def percentile_interval(values: np.ndarray) -> tuple[float, float]:
    """(2.5th, 97.5th) percentile of bootstrap statistics `values` (n_resamples,)."""
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def cluster_bootstrap_mean(scores: np.ndarray, clusters: np.ndarray, n_resamples: int = 1000,
                           seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of `scores` (n, ...) resampling `clusters` (n,) with replacement.

    Every element of a row counts once (a row of D digits counts D times); each resample's mean is its
    clusters' total score over their total count."""
    unique, inverse = np.unique(np.asarray(clusters), return_inverse=True)
    per_row = np.asarray(scores, dtype=float).reshape(len(inverse), -1)
    sums = np.bincount(inverse, weights=per_row.sum(1), minlength=len(unique))
    counts = np.bincount(inverse, weights=np.full(len(per_row), per_row.shape[1]), minlength=len(unique))
    draws = resample(len(unique), n_resamples, seed)
    return percentile_interval(sums[draws].sum(1) / counts[draws].sum(1))
