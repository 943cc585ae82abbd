"""Configs with uncertainty: the runs of a report grouped by config, each value with its 95%
bootstrap interval, and the best config with those not significantly worse than it marked.

A config is a grid entry (all its replicates) or, outside a grid, one run. With several replicates
a value is the mean over seeds and its interval is over seeds (each replicate's value is one
sample). A config of one run keeps its run's values: a separation score is SiSEC's median over
tracks, with its interval over the test tracks (the per-track scores the run records); loss and
time, one value per run, have none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from umx_tune import tracking
from umx_tune.evaluation import statistics
from umx_tune.evaluation.statistics import Interval, Mark

if TYPE_CHECKING:  # no MLflow import: the tables (and `report --help`) use this module
    from umx_tune.report.runs import RunRow

# the value of each summarised metric a run holds, and whether higher is better
SUMMARISED: dict[str, bool] = {
    tracking.TRAIN_LOSS: False,
    tracking.VALID_LOSS: False,
    tracking.TRAIN_SECONDS: False,
    **{metric: True for metric in tracking.SEPARATION_METRICS},
}
# what each table ranks its configs by
TRAINING_RANKING = tracking.VALID_LOSS
SCORES_RANKING = "SDR"


@dataclass
class Config:
    """One config of a report: its runs (replicates, by replicate index), a summary row (params of
    its first run; each metric the mean of its intervals) and how it ranks."""

    name: str
    runs: list[RunRow]
    row: RunRow
    intervals: dict[str, Interval] = field(default_factory=dict)
    marks: dict[str, Mark] = field(default_factory=dict)  # ranking metric -> this config's mark

    @property
    def replicates(self) -> int:
        return len(self.runs)


def value(row: RunRow, metric: str) -> float | None:
    """A run's value of a summarised metric (its training time included)."""
    return row.train_seconds if metric == tracking.TRAIN_SECONDS else row.metric(metric)


def _config_key(row: RunRow) -> str:
    """A grid entry, a search trial (with the runs that confirm it), or else the run itself."""
    trial = row.confirms if row.confirms is not None else row.trial_number
    return row.grid_entry or (f"trial {trial}" if trial is not None else row.run_id)


def group(rows: Sequence[RunRow]) -> dict[str, list[RunRow]]:
    """Runs by config: a grid entry's replicates together, a search trial's with its confirmations
    (in replicate order), any other run alone."""
    configs: dict[str, list[RunRow]] = {}
    for row in rows:
        configs.setdefault(_config_key(row), []).append(row)
    for runs in configs.values():
        runs.sort(key=lambda r: r.replicate or 0)
    return configs


def samples(runs: Sequence[RunRow], metric: str) -> tuple[list[float], str, list[str]]:
    """The samples a config's interval of metric is drawn from, their unit, and their labels:
    one value per replicate, or with one run the per-track scores (labels: seeds or track names)."""
    values = [(r, v) for r in runs if (v := value(r, metric)) is not None]
    if len(values) == 1 and values[0][0].track_scores:
        tracks = values[0][0].track_scores
        named = sorted((name, scores[metric]) for name, scores in tracks.items() if metric in scores)
        if named:
            return [v for _, v in named], statistics.UNIT_TRACKS, [name for name, _ in named]
    return [v for _, v in values], statistics.UNIT_SEEDS, [str(r.replicate or 0) for r, _ in values]


def summarize(rows: Sequence[RunRow], *, seed: int = 0) -> list[Config]:
    """The configs of rows in report order, each metric as a mean with its interval, ranked."""
    configs = []
    for runs in group(rows).values():
        intervals = {}
        for metric in SUMMARISED:
            values, unit, _ = samples(runs, metric)
            if values:
                intervals[metric] = _interval(values, unit, seed)
        first = runs[0]
        name = first.grid_entry or first.name
        metrics = {**first.metrics, **{m: i.estimate for m, i in intervals.items()}}
        state = first.state if len(runs) == 1 else _states(runs)
        row = replace(first, name=name, metrics=metrics, state=state)
        configs.append(Config(name, runs, row, intervals))
    for metric in (TRAINING_RANKING, SCORES_RANKING):
        _rank(configs, metric, seed)
    return configs


def _interval(values: list[float], unit: str, seed: int) -> Interval:
    """Over tracks, the median (a SiSEC aggregate: the run's own score); over seeds, the mean."""
    bootstrap = statistics.bootstrap_median if unit == statistics.UNIT_TRACKS else statistics.bootstrap_mean
    return bootstrap(values, unit=unit, seed=seed)


def _states(runs: Sequence[RunRow]) -> str:
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.state] = counts.get(run.state, 0) + 1
    return ", ".join(f"{n} {state}" for state, n in counts.items())


def _rank(configs: list[Config], metric: str, seed: int) -> None:
    """Mark the best config by metric and how each other one compares with it.

    All configs with replicates: their seeds, unpaired. All of one run each with per-track scores:
    the tracks every one of them scored, paired. Any other mix has no common unit: no marks.
    """
    scored = [c for c in configs if metric in c.intervals]
    if len(scored) < 2:
        return
    drawn = {c.name: samples(c.runs, metric) for c in scored}
    units = {unit for _, unit, _ in drawn.values()}
    if units == {statistics.UNIT_TRACKS}:
        common = set.intersection(*(set(labels) for _, _, labels in drawn.values()))
        if len(common) < 2:
            return
        paired = {
            name: [v for v, label in zip(values, labels, strict=True) if label in common]
            for name, (values, _, labels) in drawn.items()
        }
        marks = statistics.mark_best(
            paired, higher_is_better=SUMMARISED[metric], paired=True, unit=statistics.UNIT_TRACKS, seed=seed
        )
    elif units == {statistics.UNIT_SEEDS}:
        marks = statistics.mark_best(
            {name: values for name, (values, _, _) in drawn.items()},
            higher_is_better=SUMMARISED[metric],
            paired=False,
            unit=statistics.UNIT_SEEDS,
            seed=seed,
        )
    else:
        return
    for config in scored:
        config.marks[metric] = marks[config.name]


def units(configs: Sequence[Config], metric: str) -> str:
    """What the intervals of metric are over, for a table's legend: 'seeds (3 each)', 'tracks', …"""
    found = sorted({(i.unit, i.n) for c in configs if (i := c.intervals.get(metric)) is not None})
    return "; ".join(f"{n} {unit}" for unit, n in found)
