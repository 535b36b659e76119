"""Statistics of the study: the trend of a curve and paired bootstrap confidence intervals.

Both are plain numpy; the tests check them against scipy's least-squares fit and against cases with a known
answer (identical arms, a constant shift).
"""

from __future__ import annotations

import math
import warnings
from typing import Callable

import numpy as np

# A statistic maps units [..., n, *unit] to one value per leading index: the bootstrap scores a batch of resamples
# [resamples, n, *unit] in one call, and one arm's units [n, *unit] give its score.
Statistic = Callable[[np.ndarray], "np.ndarray | float"]


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


def mean_statistic(units: np.ndarray) -> np.ndarray | float:
    """The mean of scalar units [..., n]: one value per leading index (a batch of bootstrap resamples)."""
    return np.mean(units, axis=-1)


def _as_runs(units) -> list[np.ndarray]:
    """An arm's units as a list of runs: a list or tuple holds one array per training seed, an array is one run."""
    runs = [np.asarray(u) for u in units] if isinstance(units, (list, tuple)) else [np.asarray(units)]
    if not runs or any(len(r) != len(runs[0]) for r in runs):
        raise ValueError(f"an arm's runs must score the same units: {[len(r) for r in runs]}")
    return runs


def resample_units(rng: np.random.Generator, n: int, documents: np.ndarray | None) -> np.ndarray:
    """Indices of one bootstrap resample of n units: units drawn with replacement, or, when `documents` [n, 2] names
    the two documents of each unit (a pair), documents drawn with replacement and every pair of drawn documents
    kept as often as its two documents were drawn (pairs that share a document are not independent)."""
    if documents is None:
        return rng.integers(0, n, size=n)
    count = int(documents.max()) + 1
    drawn = np.bincount(rng.integers(0, count, size=count), minlength=count)
    return np.repeat(np.arange(n), drawn[documents[:, 0]] * drawn[documents[:, 1]])


def _replicates(arms: list[dict], statistics: dict, resamples: int, seed: int, documents: dict) -> list[np.ndarray]:
    """Bootstrap replicates of each arm's score averaged over `statistics`' tasks (task -> statistic). `arms` are
    dicts task -> units (an array, or a list of arrays: one run per training seed). In each replicate every task's
    units are resampled once and shared by all arms (paired), and an arm with several runs draws its runs with
    replacement once for all tasks, so the interval includes the seed-to-seed spread.

    The resamples are drawn first, in one fixed order, and each statistic then scores all of a task's resamples at
    once (statistics map units [..., n, *unit] to [...]); resamples of documents differ in length and are scored
    one by one."""
    arms = [{task: _as_runs(units[task]) for task in statistics} for units in arms]
    sizes = {task: len(arms[0][task][0]) for task in statistics}
    for task, n in sizes.items():
        if any(len(a[task][0]) != n for a in arms):
            raise ValueError(f"{task or 'units'}: paired units differ in number: {[len(a[task][0]) for a in arms]}")
        if n < 2:
            raise ValueError(f"{task or 'units'}: a bootstrap needs at least 2 units")
        pairs = documents.get(task)
        if pairs is not None and np.shape(pairs) != (n, 2):
            raise ValueError(f"{task or 'units'}: documents must be [units, 2] = [{n}, 2], got "
                             f"{list(np.shape(pairs))}")
    counts = [{len(runs) for runs in a.values()} for a in arms]
    if any(len(c) != 1 for c in counts):
        raise ValueError(f"an arm must have the same number of runs on every task: {counts}")
    runs = [len(next(iter(arm.values()))) for arm in arms]
    rng = np.random.default_rng(seed)
    indices = {task: [] for task in sizes}
    picks = [np.zeros((resamples, r)) for r in runs]  # picks[arm][replicate, run]: how often the run was drawn
    for r in range(resamples):
        for task, n in sizes.items():
            indices[task].append(resample_units(rng, n, None if documents.get(task) is None
                                                else np.asarray(documents[task])))
        for arm_picks, arm_runs in zip(picks, runs):
            np.add.at(arm_picks[r], [0] if arm_runs == 1 else rng.integers(0, arm_runs, size=arm_runs), 1)
    undefined = np.zeros(resamples, dtype=bool)  # a resample of fewer than 2 units (possible with documents)
    for task_indices in indices.values():
        undefined |= np.array([len(i) < 2 for i in task_indices])
    replicates = []
    for arm, arm_picks in zip(arms, picks):
        per_task = []
        for task, statistic in statistics.items():
            # scores[replicate, run]: the statistic of each run on each resample
            scores = np.stack([_score_resamples(statistic, run, indices[task]) for run in arm[task]], axis=1)
            per_task.append((scores * arm_picks).sum(axis=1) / arm_picks.sum(axis=1))
        values = np.mean(per_task, axis=0)
        values[undefined] = np.nan
        replicates.append(values)
    return replicates


def _score_resamples(statistic: Statistic, units: np.ndarray, indices: list[np.ndarray]) -> np.ndarray:
    """statistic(units[i]) for every resample i; in one call when the resamples have one length."""
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a constant resample has no correlation: its nan is left out later
        if len({len(i) for i in indices}) == 1:
            return np.asarray(statistic(units[np.stack(indices)]), dtype=np.float64)
        return np.array([statistic(units[i]) if len(i) >= 2 else np.nan for i in indices], dtype=np.float64)


def point_estimate(units, statistic: Statistic = None) -> float:
    """The arm's score: statistic of each run's units, averaged over its runs."""
    statistic = statistic or mean_statistic
    return float(np.mean([statistic(run) for run in _as_runs(units)]))


def _percentiles(values: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = 100 * (1 - confidence) / 2
    # a replicate whose resample leaves the statistic undefined (a Spearman correlation of fewer than two distinct
    # pairs, possible when few documents are drawn) is left out
    low, high = np.nanpercentile(values, [tail, 100 - tail])
    return float(low), float(high)


def paired_bootstrap(units_a, units_b, statistic: Statistic = mean_statistic,
                     resamples: int = 2000, seed: int = 0, confidence: float = 0.95, documents=None) -> dict:
    """Difference statistic(A) - statistic(B) and its percentile bootstrap interval, resampling the paired units
    (queries, sentence pairs; or the documents of the pairs, `documents`) together: both arms see the same
    resampled units in every replicate.

    `units_*` are arrays whose first axis is the unit (extra axes are kept: an STS unit is a (prediction, gold)
    row), or lists of such arrays, one per training seed: the score is then the mean over seeds and each
    replicate also resamples the seeds. Returns {"diff", "ci_low", "ci_high", "n", "resamples"}.
    """
    replicates_a, replicates_b = _replicates([{"": units_a}, {"": units_b}], {"": statistic}, resamples, seed,
                                             {"": documents})
    low, high = _percentiles(replicates_a - replicates_b, confidence)
    return {"diff": point_estimate(units_a, statistic) - point_estimate(units_b, statistic), "ci_low": low,
            "ci_high": high, "n": len(_as_runs(units_a)[0]), "resamples": resamples}


def bootstrap_interval(units, statistic: Statistic = mean_statistic, resamples: int = 2000,
                       seed: int = 0, confidence: float = 0.95, documents=None) -> tuple[float, float]:
    """Percentile bootstrap interval of one arm's statistic (the error bars of a score); units as in
    `paired_bootstrap`."""
    (replicates,) = _replicates([{"": units}], {"": statistic}, resamples, seed, {"": documents})
    return _percentiles(replicates, confidence)


def average_score(arm: dict, statistics: dict) -> float:
    """The mean over tasks of the arm's score on each (`arm`: task -> units)."""
    return float(np.mean([point_estimate(arm[task], statistic) for task, statistic in statistics.items()]))


def average_interval(arm: dict, statistics: dict, resamples: int = 2000, seed: int = 0, documents=None,
                     confidence: float = 0.95) -> tuple[float, float]:
    """Bootstrap interval of the mean over tasks, every task's units resampled in each replicate."""
    (replicates,) = _replicates([arm], statistics, resamples, seed, documents or {})
    return _percentiles(replicates, confidence)


def paired_average_bootstrap(arm_a: dict, arm_b: dict, statistics: dict, resamples: int = 2000, seed: int = 0,
                             documents=None, confidence: float = 0.95) -> dict:
    """`paired_bootstrap` of the mean over tasks."""
    replicates_a, replicates_b = _replicates([arm_a, arm_b], statistics, resamples, seed, documents or {})
    low, high = _percentiles(replicates_a - replicates_b, confidence)
    return {"diff": average_score(arm_a, statistics) - average_score(arm_b, statistics), "ci_low": low,
            "ci_high": high, "n": sum(len(_as_runs(arm_a[task])[0]) for task in statistics),
            "resamples": resamples}
