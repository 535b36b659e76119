"""Statistics of the study: the trend of a curve and paired bootstrap confidence intervals.

Both are plain numpy; the tests check them against scipy's least-squares fit and against cases with a known
answer (identical arms, a constant shift).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np


def linear_trend(values, steps=None) -> tuple[float, float]:
    """Least-squares slope of `values` over `steps` (1..n when omitted) and its standard error; nan with fewer
    than 3 points."""
    y = np.asarray(values, dtype=np.float64)
    x = np.arange(1, len(y) + 1, dtype=np.float64) if steps is None else np.asarray(steps, dtype=np.float64)
    if len(y) != len(x):
        raise ValueError(f"{len(y)} values but {len(x)} steps")
    if len(y) < 3:
        return float("nan"), float("nan")
    sxx = float(((x - x.mean()) ** 2).sum())
    slope = float(((x - x.mean()) * (y - y.mean())).sum() / sxx)
    residuals = y - (y.mean() + slope * (x - x.mean()))
    return slope, math.sqrt(float((residuals ** 2).sum()) / (len(y) - 2) / sxx)


def trend_verdict(slope: float, error: float, what: str = "the reward") -> str:
    """A sentence: rose / fell / no clear trend, by the slope against twice its standard error."""
    if math.isnan(slope):
        return f"too few points to tell whether {what} rose"
    if slope - 2 * error > 0:
        return f"{what} rose (slope more than two standard errors above 0)"
    if slope + 2 * error < 0:
        return f"{what} fell (slope more than two standard errors below 0)"
    return f"{what} showed no clear trend (slope within two standard errors of 0)"


def mean_statistic(units: np.ndarray) -> float:
    return float(np.mean(units))


def _replicates(arrays, statistic, resamples: int, seed: int) -> list[np.ndarray]:
    """statistic of each array on the same `resamples` bootstrap resamples of their (shared) units."""
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError(f"paired units differ in number: {[len(a) for a in arrays]}")
    if n < 2:
        raise ValueError("a bootstrap needs at least 2 units")
    indices = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    return [np.array([statistic(a[i]) for i in indices]) for a in arrays]


def _percentiles(values: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def paired_bootstrap(units_a, units_b, statistic: Callable[[np.ndarray], float] = mean_statistic,
                     resamples: int = 2000, seed: int = 0, confidence: float = 0.95) -> dict:
    """Difference statistic(A) - statistic(B) and its percentile bootstrap interval, resampling the paired units
    (queries, sentence pairs) together: both arms see the same resampled units in every replicate.

    `units_*` are arrays whose first axis is the unit (extra axes are kept: an STS unit is a (prediction, gold)
    row). Returns {"diff", "ci_low", "ci_high", "n", "resamples"}.
    """
    a, b = np.asarray(units_a), np.asarray(units_b)
    replicates_a, replicates_b = _replicates([a, b], statistic, resamples, seed)
    low, high = _percentiles(replicates_a - replicates_b, confidence)
    return {"diff": statistic(a) - statistic(b), "ci_low": low, "ci_high": high, "n": len(a), "resamples": resamples}


def bootstrap_interval(units, statistic: Callable[[np.ndarray], float] = mean_statistic, resamples: int = 2000,
                       seed: int = 0, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of one arm's statistic (the error bars of a score)."""
    (replicates,) = _replicates([np.asarray(units)], statistic, resamples, seed)
    return _percentiles(replicates, confidence)
