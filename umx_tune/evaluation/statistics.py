"""Uncertainty of scores: seeded percentile-bootstrap intervals, paired comparisons, ties with the best.

Every interval is a percentile bootstrap drawn from a NumPy Generator seeded by the caller, so the
same numbers give the same interval in every run. The resampling unit (the tracks, the seeds, or the
seeds x tracks pairs) travels with each interval, and from fewer than 2 samples no interval is made:
an `Interval` then carries the reason instead of bounds. Scores are float64; NaN or infinite input is
an error, never a silent NaN interval.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from umx_tune.errors import StatisticsError

MIN_RESAMPLES = 2000
LEVEL = 0.95
# resampling units: per-track scores of one run, per-seed aggregates of replicates, or both at once
UNIT_TRACKS = "tracks"
UNIT_SEEDS = "seeds"
UNIT_SEEDS_TRACKS = "seeds x tracks"
# the largest sample whose Wilcoxon null distribution is enumerated when ties or zeros rule out
# scipy's exact table: 2**13 sign flips, which is also where scipy's own "auto" stops enumerating
_MAX_ENUMERATED = 13
_MAX_EXACT = 50  # scipy's "auto" limit of the exact (tie-free) signed-rank distribution

Values = Sequence[float] | np.ndarray
Statistic = Callable[..., Any]  # np.mean or np.median: (…, n) with axis -> (…)


@dataclass(frozen=True)
class Interval:
    """A mean (or mean difference) with its bootstrap interval, or with the reason there is none.

    low and high are None, and reason says why, when fewer than 2 samples were given.
    `format(interval, ".2f")` reads "4.31 [3.90, 4.70]" or "4.31 (n=1: no interval)".
    """

    estimate: float
    low: float | None
    high: float | None
    n: int
    unit: str
    method: str
    resamples: int
    level: float
    reason: str | None = None

    @property
    def defined(self) -> bool:
        """Whether there are bounds (at least 2 samples)."""
        return self.low is not None and self.high is not None

    def contains(self, value: float) -> bool:
        """Whether value lies within the bounds; an error for an interval that has none."""
        if self.low is None or self.high is None:
            raise StatisticsError(f"no interval: {self.reason}")
        return self.low <= value <= self.high

    def __format__(self, spec: str) -> str:
        spec = spec or ".2f"
        text = format(self.estimate, spec)
        if self.low is None or self.high is None:
            return f"{text} (n={self.n}: no interval)"
        return f"{text} [{format(self.low, spec)}, {format(self.high, spec)}]"

    def __str__(self) -> str:
        return format(self, "")


@dataclass(frozen=True)
class PairedComparison:
    """a − b over paired samples: mean difference with its paired bootstrap interval, median
    difference, and the two-sided Wilcoxon signed-rank p-value with the variant that computed it."""

    mean_difference: Interval
    median_difference: float
    p_value: float
    test: str
    n: int
    unit: str


class Mark(enum.Enum):
    """A config's standing against the config with the best mean."""

    BEST = "best"
    NOT_WORSE = "not significantly worse"
    WORSE = "worse"
    UNTESTED = "no interval"  # it or the best has fewer than 2 samples


def bootstrap_mean(
    values: Values, *, unit: str, resamples: int = MIN_RESAMPLES, seed: int = 0, level: float = LEVEL
) -> Interval:
    """Mean of values (n,) with its percentile-bootstrap interval over the samples."""
    x = _sample(values, unit)
    method = "percentile bootstrap of the mean"
    return _bootstrap(x, unit=unit, method=method, resamples=resamples, seed=seed, level=level)


def bootstrap_median(
    values: Values, *, unit: str, resamples: int = MIN_RESAMPLES, seed: int = 0, level: float = LEVEL
) -> Interval:
    """Median of values (n,) with its percentile-bootstrap interval over the samples: the interval
    of a SiSEC aggregate, which is a median over tracks."""
    x = _sample(values, unit)
    method = "percentile bootstrap of the median"
    return _bootstrap(
        x, unit=unit, method=method, resamples=resamples, seed=seed, level=level, statistic=np.median
    )


def difference_of_means(
    a: Values,
    b: Values,
    *,
    unit: str,
    paired: bool,
    resamples: int = MIN_RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> Interval:
    """mean(a) − mean(b) with its percentile-bootstrap interval.

    paired: a[i] and b[i] are scores of the same track (or seed x track), and the differences are
    resampled; otherwise a (n,) and b (m,) are resampled independently (replicates of two configs).
    """
    x, y = _sample(a, unit), _sample(b, unit)
    if paired:
        _check_paired(x, y, unit)
        d = x - y
        method = "paired percentile bootstrap of the mean difference"
        return _bootstrap(d, unit=unit, method=method, resamples=resamples, seed=seed, level=level)
    method = "percentile bootstrap of the difference of means (each side resampled on its own)"
    _check_resampling(resamples, level)
    n = int(min(x.size, y.size))  # the smaller side: what an interval needs 2 of
    if n < 2:
        return _no_interval(_mean(x) - _mean(y), n, unit, method, level)
    rng = np.random.default_rng(seed)
    diffs = _resampled(x, rng, resamples) - _resampled(y, rng, resamples)
    # a difference of means lies between these, whatever the rounding of the means says
    lowest, highest = x.min() - y.max(), x.max() - y.min()
    low, high = _percentiles(np.clip(diffs, lowest, highest), level)
    return Interval(_mean(x) - _mean(y), low, high, n, unit, method, resamples, level)


def paired_comparison(
    a: Values, b: Values, *, unit: str, resamples: int = MIN_RESAMPLES, seed: int = 0, level: float = LEVEL
) -> PairedComparison:
    """Compare paired scores a (n,) and b (n,): a[i] and b[i] share a track (or a seed x track).

    Wilcoxon drops zero differences (Wilcoxon's own rule); all of them zero gives p = 1. Its p-value
    is exact without ties or zeros up to n = 50, enumerated over all sign flips with them up to
    n = 13, and otherwise the normal approximation with tie correction; `test` says which.
    """
    x, y = _sample(a, unit), _sample(b, unit)
    _check_paired(x, y, unit)
    if x.size < 2:
        raise StatisticsError(f"a paired comparison needs at least 2 {unit}, got {x.size}")
    mean = difference_of_means(x, y, unit=unit, paired=True, resamples=resamples, seed=seed, level=level)
    d = x - y
    p_value, test = _wilcoxon(d)
    return PairedComparison(mean, float(np.median(d)), p_value, test, int(d.size), unit)


def not_significantly_worse(
    best: Values,
    other: Values,
    *,
    higher_is_better: bool,
    paired: bool,
    unit: str,
    resamples: int = MIN_RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> bool | None:
    """Whether other's scores do not show it worse than best's; None when either has fewer than 2.

    The interval of how much worse other is (best − other for SDR, other − best for a loss or a
    time) reaches 0: it contains 0, as its estimate is >= 0 when best has the better mean.
    """
    worse = (best, other) if higher_is_better else (other, best)
    by = difference_of_means(*worse, unit=unit, paired=paired, resamples=resamples, seed=seed, level=level)
    return None if by.low is None else by.low <= 0.0


def mark_best(
    samples: Mapping[str, Values],
    *,
    higher_is_better: bool,
    paired: bool,
    unit: str,
    resamples: int = MIN_RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> dict[str, Mark]:
    """Each config's Mark: the one with the best mean (the first on a tie), and how each other
    compares with it (`not_significantly_worse`). paired: every config scored the same tracks, in
    the same order (replicate seeds are not pairs: pass paired=False for them)."""
    if not samples:
        raise StatisticsError("no configs to rank")
    means = {name: _mean(_sample(values, unit)) for name, values in samples.items()}
    best = (max if higher_is_better else min)(means, key=means.__getitem__)
    marks = {best: Mark.BEST}
    for name, values in samples.items():
        if name == best:
            continue
        verdict = not_significantly_worse(
            samples[best],
            values,
            higher_is_better=higher_is_better,
            paired=paired,
            unit=unit,
            resamples=resamples,
            seed=seed,
            level=level,
        )
        marks[name] = Mark.UNTESTED if verdict is None else Mark.NOT_WORSE if verdict else Mark.WORSE
    return {name: marks[name] for name in samples}  # in the table's order


def _sample(values: Values, unit: str) -> np.ndarray:
    """values as a float64 (n,) array; an error when empty or not finite."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"scores must be one-dimensional, got shape {x.shape}")
    if x.size == 0:
        raise StatisticsError(f"no {unit} to summarise")
    bad = int(np.count_nonzero(~np.isfinite(x)))
    if bad:
        raise StatisticsError(
            f"{bad} of {x.size} {unit} have a NaN or infinite score; none can be summarised"
        )
    return x


def _check_paired(x: np.ndarray, y: np.ndarray, unit: str) -> None:
    if x.size != y.size:
        raise StatisticsError(f"paired scores differ in length: {x.size} vs {y.size} {unit}")


def _check_resampling(resamples: int, level: float) -> None:
    if resamples < MIN_RESAMPLES:
        raise StatisticsError(f"resamples must be at least {MIN_RESAMPLES}, got {resamples}")
    if not 0.0 < level < 1.0:
        raise StatisticsError(f"the confidence level must lie strictly between 0 and 1, got {level}")


def _mean(x: np.ndarray) -> float:
    # clipped to the sample's range: the mean of equal values is that value, not one ulp off it
    return float(np.clip(x.mean(), x.min(), x.max()))


def _bootstrap(
    x: np.ndarray,
    *,
    unit: str,
    method: str,
    resamples: int,
    seed: int,
    level: float,
    statistic: Statistic = np.mean,
) -> Interval:
    """statistic of x (n,) and the percentile interval of the statistic of its resamples."""
    _check_resampling(resamples, level)
    estimate = float(np.clip(statistic(x), x.min(), x.max()))
    if x.size < 2:
        return _no_interval(estimate, int(x.size), unit, method, level)
    resampled = _resampled(x, np.random.default_rng(seed), resamples, statistic)
    low, high = _percentiles(np.clip(resampled, x.min(), x.max()), level)
    return Interval(estimate, low, high, int(x.size), unit, method, resamples, level)


def _resampled(
    x: np.ndarray, rng: np.random.Generator, resamples: int, statistic: Statistic = np.mean
) -> np.ndarray:
    """statistic of `resamples` draws of x.size samples with replacement, (resamples,)."""
    picks = rng.integers(0, x.size, size=(resamples, x.size))  # (resamples, n) indices into x
    return np.asarray(statistic(x[picks], axis=1))


def _percentiles(estimates: np.ndarray, level: float) -> tuple[float, float]:
    low, high = np.quantile(estimates, [(1.0 - level) / 2, (1.0 + level) / 2])
    return float(low), float(high)


def _no_interval(estimate: float, n: int, unit: str, method: str, level: float) -> Interval:
    reason = f"{n} {unit}: an interval needs at least 2"
    return Interval(estimate, None, None, n, unit, method, 0, level, reason)


def _wilcoxon(d: np.ndarray) -> tuple[float, str]:
    """Two-sided Wilcoxon signed-rank p-value of the differences d (n,) and the variant used."""
    nonzero = d[d != 0.0]
    if nonzero.size == 0:
        return 1.0, "Wilcoxon signed-rank: every difference is zero, p = 1"
    zeros = d.size - nonzero.size
    ties = np.unique(np.abs(nonzero)).size < nonzero.size
    method: str | stats.PermutationMethod
    if d.size <= _MAX_EXACT and not (ties or zeros):
        method, variant = "exact", "exact"
    elif d.size <= _MAX_ENUMERATED:
        # permutation_test enumerates all 2**n sign flips when n_resamples allows it: exact, unseeded
        method, variant = stats.PermutationMethod(n_resamples=2**d.size), "exact over all sign flips"
    else:
        method, variant = "asymptotic", "normal approximation"
    p_value = float(stats.wilcoxon(d, zero_method="wilcox", method=method).pvalue)
    dropped = f", {zeros} zero differences dropped" if zeros else ""
    return p_value, f"Wilcoxon signed-rank, two-sided, {variant}{dropped}"
