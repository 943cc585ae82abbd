"""Known answers of the bootstrap intervals, the paired comparison and the ties with the best."""

from __future__ import annotations

import dataclasses
import itertools
import json

import numpy as np
import pytest
from scipy import stats

from umx_tune.errors import StatisticsError
from umx_tune.evaluation.statistics import (
    MIN_RESAMPLES,
    UNIT_SEEDS,
    UNIT_SEEDS_TRACKS,
    UNIT_TRACKS,
    Interval,
    Mark,
    bootstrap_mean,
    bootstrap_median,
    difference_of_means,
    mark_best,
    not_significantly_worse,
    paired_comparison,
)

# Differences in height (eighths of an inch) of cross- minus self-fertilized Zea mays plants, Darwin's
# data in Fisher's "The Design of Experiments" (1935), the example of scipy.stats.wilcoxon's
# documentation: T = min(T+, T-) = 24 and the exact two-sided p = 0.041259765625 (= 1352 / 2**15).
DARWIN = np.array([6, 8, 14, 16, 23, 24, 28, 29, 41, -48, 49, 56, 60, -67, 75], dtype=float)
DARWIN_P = 0.041259765625


def scores(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(4.0, 1.5, n)


def test_bootstrap_mean_brackets_the_mean_and_states_its_resampling() -> None:
    x = scores(20)
    interval = bootstrap_mean(x, unit=UNIT_TRACKS)
    assert interval.estimate == pytest.approx(x.mean(), abs=1e-12)
    assert interval.low is not None and interval.high is not None
    assert interval.low < interval.estimate < interval.high
    # the percentile interval of a mean is about mean ± 1.96 standard errors
    half_width = 1.96 * x.std(ddof=1) / np.sqrt(x.size)
    assert (interval.high - interval.low) / 2 == pytest.approx(half_width, rel=0.15)
    assert (interval.n, interval.unit, interval.resamples, interval.level) == (20, "tracks", 2000, 0.95)
    assert "bootstrap" in interval.method


def test_same_input_same_interval_and_the_seed_is_what_changes_it() -> None:
    x = list(scores(12))
    y = list(scores(12, seed=9))
    first = bootstrap_mean(x, unit=UNIT_SEEDS, seed=3)
    assert bootstrap_mean(np.array(x), unit=UNIT_SEEDS, seed=3) == first
    assert bootstrap_mean(x, unit=UNIT_SEEDS, seed=4) != first
    assert paired_comparison(x, y, unit=UNIT_TRACKS) == paired_comparison(x, y, unit=UNIT_TRACKS)


def test_a_wider_level_gives_a_wider_interval() -> None:
    x = scores(15)
    narrow = bootstrap_mean(x, unit=UNIT_TRACKS, level=0.5)
    wide = bootstrap_mean(x, unit=UNIT_TRACKS, level=0.99)
    assert narrow.low is not None and narrow.high is not None
    assert wide.low is not None and wide.high is not None
    assert wide.low < narrow.low < narrow.high < wide.high


def test_fewer_than_two_samples_give_an_estimate_and_a_reason_not_an_interval() -> None:
    interval = bootstrap_mean([4.3125], unit=UNIT_SEEDS)
    assert (interval.estimate, interval.low, interval.high, interval.n) == (4.3125, None, None, 1)
    assert not interval.defined
    assert interval.reason == "1 seeds: an interval needs at least 2"
    assert format(interval, ".2f") == "4.31 (n=1: no interval)"
    with pytest.raises(StatisticsError, match="needs at least 2"):
        interval.contains(4.3125)
    assert not difference_of_means([1.0, 2.0], [3.0], unit=UNIT_SEEDS, paired=False).defined


def test_interval_formats_for_a_table() -> None:
    interval = Interval(4.3125, 3.9, 4.7, 10, UNIT_TRACKS, "m", 2000, 0.95)
    assert format(interval, ".2f") == "4.31 [3.90, 4.70]"
    assert str(interval) == "4.31 [3.90, 4.70]"
    assert f"{interval:.1f}" == "4.3 [3.9, 4.7]"


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_scores_are_a_one_line_error(bad: float) -> None:
    with pytest.raises(StatisticsError, match=r"^1 of 3 tracks have a NaN or infinite score") as info:
        bootstrap_mean([1.0, bad, 2.0], unit=UNIT_TRACKS)
    assert "\n" not in str(info.value)
    with pytest.raises(StatisticsError, match="NaN"):
        paired_comparison([1.0, 2.0, 3.0], [1.0, bad, 2.0], unit=UNIT_TRACKS)
    with pytest.raises(StatisticsError, match="NaN"):
        mark_best({"a": [1.0, 2.0], "b": [bad, 1.0]}, higher_is_better=True, paired=False, unit=UNIT_SEEDS)


def test_empty_scores_too_few_resamples_and_a_bad_level_are_errors() -> None:
    with pytest.raises(StatisticsError, match="no tracks to summarise"):
        bootstrap_mean([], unit=UNIT_TRACKS)
    with pytest.raises(StatisticsError, match=f"at least {MIN_RESAMPLES}"):
        bootstrap_mean([1.0, 2.0], unit=UNIT_TRACKS, resamples=500)
    with pytest.raises(StatisticsError, match="strictly between 0 and 1"):
        bootstrap_mean([1.0, 2.0], unit=UNIT_TRACKS, level=95)


def test_identical_score_sets_differ_by_zero_with_p_one() -> None:
    x = scores(10)
    result = paired_comparison(x, x.copy(), unit=UNIT_TRACKS)
    assert result.mean_difference.contains(0.0)
    assert (result.mean_difference.low, result.mean_difference.high) == (0.0, 0.0)
    assert (result.median_difference, result.p_value, result.n) == (0.0, 1.0, 10)
    assert "every difference is zero" in result.test


def test_a_constant_shift_is_exactly_the_interval() -> None:
    b = np.array([-3.25, 0.5, 2.0, 7.75, 4.125, -1.0, 6.5, 3.0])  # exact binary fractions
    result = paired_comparison(b + 1.5, b, unit=UNIT_TRACKS)
    interval = result.mean_difference
    assert (interval.estimate, interval.low, interval.high) == (1.5, 1.5, 1.5)
    assert result.median_difference == 1.5
    # 8 equal differences: all tied, so the null distribution is enumerated over the 2**8 sign flips,
    # of which only all-positive and all-negative are as extreme: p = 2 / 256
    assert result.p_value == pytest.approx(2 / 256)
    assert "all sign flips" in result.test
    # 0.1 dB on 7 tracks: the float mean of seven 0.1s is not 0.1, the interval still is
    tenth = paired_comparison(np.full(7, 0.1), np.zeros(7), unit=UNIT_TRACKS).mean_difference
    assert (tenth.estimate, tenth.low, tenth.high) == (0.1, 0.1, 0.1)
    constant = bootstrap_mean(np.full(6, 3.3), unit=UNIT_SEEDS)
    assert (constant.estimate, constant.low, constant.high) == (3.3, 3.3, 3.3)
    # a shift that is not a binary fraction: the rounding of b + 0.1 is all that moves the bounds
    c = scores(9)
    shifted = paired_comparison(c + 0.1, c, unit=UNIT_TRACKS).mean_difference
    assert shifted.low == pytest.approx(0.1, abs=1e-14) and shifted.high == pytest.approx(0.1, abs=1e-14)
    unpaired = difference_of_means(b + 1.5, b, unit=UNIT_SEEDS, paired=False)
    assert unpaired.estimate == 1.5 and unpaired.defined


def test_wilcoxon_reproduces_darwins_published_p_value() -> None:
    cross, self_fertilized = 100.0 + DARWIN, np.full(DARWIN.size, 100.0)
    result = paired_comparison(cross, self_fertilized, unit=UNIT_TRACKS)
    assert result.p_value == DARWIN_P
    assert result.test == "Wilcoxon signed-rank, two-sided, exact"
    assert result.median_difference == 24.0
    assert result.mean_difference.estimate == pytest.approx(DARWIN.mean())
    # the swapped comparison has the opposite differences and the same two-sided p
    swapped = paired_comparison(self_fertilized, cross, unit=UNIT_TRACKS)
    assert (swapped.p_value, swapped.median_difference) == (DARWIN_P, -24.0)


def test_darwins_p_value_is_the_share_of_sign_flips_as_extreme() -> None:
    # independent of scipy: enumerate all 2**15 sign assignments of the ranks 1..15
    ranks = stats.rankdata(np.abs(DARWIN))
    signs = np.array(list(itertools.product([0, 1], repeat=DARWIN.size)))  # (32768, 15)
    t_plus = signs @ ranks
    t = np.minimum(t_plus, ranks.sum() - t_plus)
    observed = ranks[DARWIN > 0].sum()
    assert min(observed, ranks.sum() - observed) == 24
    assert np.count_nonzero(t <= 24) == 1352
    assert np.count_nonzero(t <= 24) / 2**15 == DARWIN_P


def test_ties_and_zeros_enumerate_sign_flips_exactly() -> None:
    d = np.array([1.0, 1.0, 2.0, -3.0, 2.0, 0.0, 4.0])  # ties in |d| and one zero
    result = paired_comparison(d, np.zeros_like(d), unit=UNIT_TRACKS)
    assert (
        result.test
        == "Wilcoxon signed-rank, two-sided, exact over all sign flips, 1 zero differences dropped"
    )
    # by hand: the zero dropped, average ranks of |d| = 1 1 2 3 2 4, T+ of all 2**6 sign flips
    nonzero = d[d != 0]
    ranks = stats.rankdata(np.abs(nonzero))
    t_plus = np.array(list(itertools.product([0, 1], repeat=nonzero.size))) @ ranks
    observed = ranks[nonzero > 0].sum()
    p = 2 * min(np.mean(t_plus <= observed), np.mean(t_plus >= observed))
    assert result.p_value == pytest.approx(min(p, 1.0))


def test_many_pairs_with_ties_use_the_normal_approximation() -> None:
    d = np.round(scores(30, seed=5), 1)  # rounded to 0.1 dB: ties
    result = paired_comparison(d, np.zeros_like(d), unit=UNIT_SEEDS_TRACKS)
    assert result.test.endswith("normal approximation")
    assert result.p_value == pytest.approx(stats.wilcoxon(d, method="asymptotic").pvalue)
    assert result.unit == result.mean_difference.unit == "seeds x tracks"


def test_pairs_must_match_and_be_at_least_two() -> None:
    with pytest.raises(StatisticsError, match=r"^paired scores differ in length: 3 vs 2 tracks$"):
        paired_comparison([1.0, 2.0, 3.0], [1.0, 2.0], unit=UNIT_TRACKS)
    with pytest.raises(StatisticsError, match="needs at least 2 tracks, got 1"):
        paired_comparison([1.0], [2.0], unit=UNIT_TRACKS)


def test_comparison_is_plain_json() -> None:
    x = scores(6)
    data = json.loads(json.dumps(dataclasses.asdict(paired_comparison(x + 0.5, x, unit=UNIT_TRACKS))))
    assert data["n"] == data["mean_difference"]["n"] == 6
    assert data["mean_difference"]["unit"] == "tracks"


def test_pairing_removes_the_track_to_track_spread() -> None:
    tracks = np.linspace(-5.0, 5.0, 12)  # tracks differ a lot, the configs by a steady 0.3 dB
    a, b = tracks + 0.3 + 0.01 * scores(12, seed=2), tracks
    paired = difference_of_means(a, b, unit=UNIT_TRACKS, paired=True)
    unpaired = difference_of_means(a, b, unit=UNIT_TRACKS, paired=False)
    assert paired.low is not None and paired.low > 0
    assert unpaired.low is not None and unpaired.low < 0 < unpaired.estimate


def test_not_significantly_worse_follows_the_direction_of_better() -> None:
    high = np.array([5.0, 5.25, 4.75, 5.5, 4.5])
    close, low = high - 0.125 * np.array([1, -1, 1, -1, 0]), high - 3.0
    assert not_significantly_worse(high, close, higher_is_better=True, paired=True, unit=UNIT_TRACKS)
    assert not not_significantly_worse(high, low, higher_is_better=True, paired=True, unit=UNIT_TRACKS)
    # for a loss lower is better: high is worse than low, and low, better than high, is not worse
    assert not not_significantly_worse(low, high, higher_is_better=False, paired=False, unit=UNIT_SEEDS)
    assert not_significantly_worse(high, low, higher_is_better=False, paired=False, unit=UNIT_SEEDS)
    assert not_significantly_worse([1.0], high, higher_is_better=True, paired=False, unit=UNIT_SEEDS) is None


def test_mark_best_marks_the_best_its_ties_and_the_rest() -> None:
    samples = {
        "small": [2.9, 3.1, 3.0, 2.8],
        "large": [4.0, 4.2, 3.8, 4.1],
        "large-alike": [3.9, 4.1, 3.7, 4.15],
        "single": [2.0],
    }
    marks = mark_best(samples, higher_is_better=True, paired=False, unit=UNIT_SEEDS)
    assert list(marks) == list(samples)  # the table's order
    assert marks == {
        "small": Mark.WORSE,
        "large": Mark.BEST,
        "large-alike": Mark.NOT_WORSE,
        "single": Mark.UNTESTED,
    }
    # as for a loss: the single replicate is best, and with 1 sample nothing compares with it
    marks = mark_best(samples, higher_is_better=False, paired=False, unit=UNIT_SEEDS)
    assert marks["single"] == Mark.BEST
    assert {marks[name] for name in ("small", "large", "large-alike")} == {Mark.UNTESTED}
    with pytest.raises(StatisticsError, match="no configs"):
        mark_best({}, higher_is_better=True, paired=False, unit=UNIT_SEEDS)


def test_bootstrap_median_is_the_median_with_an_interval_of_medians() -> None:
    # an outlier moves the mean far, the median (a SiSEC aggregate's statistic) not at all
    scores = [2.0 + 0.05 * i for i in range(19)] + [40.0]
    median = bootstrap_median(scores, unit=UNIT_TRACKS)
    assert median.estimate == pytest.approx(2.475) and median.method == "percentile bootstrap of the median"
    assert median.low is not None and median.high is not None
    assert 2.0 <= median.low <= median.estimate <= median.high < 3.0
    assert median == bootstrap_median(scores, unit=UNIT_TRACKS)  # seeded: the same interval again
    assert median.high < bootstrap_mean(scores, unit=UNIT_TRACKS).estimate
    constant = bootstrap_median([4.2] * 6, unit=UNIT_TRACKS)
    assert (constant.estimate, constant.low, constant.high) == (4.2, 4.2, 4.2)
