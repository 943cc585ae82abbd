"""A paired comparison of two configs (runs, or a grid entry's replicates) over the test tracks they
share: per metric the mean and median difference, its paired bootstrap interval, Wilcoxon's p.

With replicates on both sides, replicate r of one is paired with replicate r of the other (the same
training seed) and each with the same track: the pairs are seeds x tracks.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from umx_tune import tracking
from umx_tune.errors import ReportError
from umx_tune.evaluation import statistics
from umx_tune.evaluation.statistics import PairedComparison
from umx_tune.report.runs import RunRow

MIN_PAIRS = 2


@dataclass(frozen=True)
class Comparison:
    """a − b per separation metric (dB), over the pairs both were scored on."""

    a: str
    b: str
    a_runs: tuple[str, ...]
    b_runs: tuple[str, ...]
    unit: str
    pairs: int
    metrics: dict[str, PairedComparison]

    def to_json(self) -> str:
        document: dict[str, Any] = dataclasses.asdict(self)
        return json.dumps(document, indent=2) + "\n"


def _scores(run: RunRow, name: str) -> dict[str, dict[str, float]]:
    if not run.track_scores:
        raise ReportError(
            f"run {run.run_id} ({name}) records no per-track scores (scored before umx-tune recorded "
            "them); evaluate its model again with `umx-tune evaluate --model`"
        )
    return run.track_scores


def pairs(a: Sequence[RunRow], b: Sequence[RunRow], metric: str) -> tuple[list[float], list[float], str]:
    """The paired scores of metric: (a's, b's, unit). Replicate r with replicate r when both sides
    have as many replicates; else each side's first run, paired by track."""
    if len(a) > 1 and len(a) == len(b):
        couples, unit = list(zip(a, b, strict=True)), statistics.UNIT_SEEDS_TRACKS
    else:
        couples, unit = [(a[0], b[0])], statistics.UNIT_TRACKS
    xs: list[float] = []
    ys: list[float] = []
    for ra, rb in couples:
        sa, sb = _scores(ra, "a"), _scores(rb, "b")
        for track in sorted(set(sa) & set(sb)):
            if metric in sa[track] and metric in sb[track]:
                xs.append(sa[track][metric])
                ys.append(sb[track][metric])
    return xs, ys, unit


def compare(a_name: str, a: Sequence[RunRow], b_name: str, b: Sequence[RunRow], seed: int = 0) -> Comparison:
    """a − b for every separation metric; ReportError for a config compared with itself or fewer
    than MIN_PAIRS shared tracks."""
    shared = {r.run_id for r in a} & {r.run_id for r in b}
    if shared:
        raise ReportError(f"{a_name} and {b_name} are the same run ({sorted(shared)[0]}); compare two others")
    results: dict[str, PairedComparison] = {}
    unit, count = statistics.UNIT_TRACKS, 0
    for metric in tracking.SEPARATION_METRICS:
        xs, ys, unit = pairs(a, b, metric)
        if len(xs) < MIN_PAIRS:
            raise ReportError(
                f"{a_name} and {b_name} share {len(xs)} scored test tracks; a comparison needs at least "
                f"{MIN_PAIRS}"
            )
        results[metric] = statistics.paired_comparison(xs, ys, unit=unit, seed=seed)
        count = len(xs)
    return Comparison(
        a_name, b_name, tuple(r.run_id for r in a), tuple(r.run_id for r in b), unit, count, results
    )


def table(comparison: Comparison) -> str:
    """The comparison as a markdown table, one row per metric."""
    c = comparison
    lines = [
        f"{c.a} − {c.b}, over {c.pairs} {c.unit} (paired bootstrap, 95%; Wilcoxon signed-rank)",
        "",
        "| metric | mean diff (dB) | 95% interval | median diff (dB) | p (Wilcoxon) | n |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for metric, result in c.metrics.items():
        mean = result.mean_difference
        interval = f"[{mean.low:+.3f}, {mean.high:+.3f}]" if mean.defined else "—"
        lines.append(
            f"| {metric} | {mean.estimate:+.3f} | {interval} | {result.median_difference:+.3f} | "
            f"{result.p_value:.3g} | {result.n} |"
        )
    return "\n".join(lines) + "\n"


def log_to(parent_run_id: str, comparison: Comparison) -> str:
    """Log the comparison as JSON to a study's parent run; returns its artifact path."""
    from umx_tune.tracking.client import Client

    name = re.sub(r"[^0-9A-Za-z._-]+", "_", f"{comparison.a}-vs-{comparison.b}")
    path = f"{tracking.COMPARE_ARTIFACT_DIR}/{name}.json"
    Client().log_text(parent_run_id, comparison.to_json(), path)
    return path
