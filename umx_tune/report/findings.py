"""The study's research questions (docs/study.md) answered from its runs, with effects and intervals.

Each question compares configs that differ in exactly the factor it asks about (every other
parameter equal, the seed and the result-neutral ones aside), so that an effect is the factor's and
no other's. A question the runs cannot answer that way says so, and names the configs that come
closest, instead of guessing from confounded ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from umx_tune import tracking
from umx_tune.config import RESULT_NEUTRAL
from umx_tune.evaluation import statistics
from umx_tune.evaluation.statistics import Interval
from umx_tune.report.tables import hms
from umx_tune.report.uncertainty import SUMMARISED, Config, samples

# parameters two configs may differ in and still count as "the same config but for the factor"
IGNORED = ("seed", *RESULT_NEUTRAL)
# question -> the factors it asks about
QUESTIONS = {
    "How do batch size, hidden size and samples per track affect loss and training time?": (
        "batch_size",
        "hidden_size",
        "samples_per_track",
    ),
    "Can a unidirectional LSTM replace the bidirectional one for real-time separation?": ("unidirectional",),
    "How much does longer training (more epochs) buy, against its time?": ("epochs",),
}
# what each comparison reports, in order
EFFECTS = (tracking.VALID_LOSS, tracking.TRAIN_SECONDS, "SDR")


@dataclass(frozen=True)
class Effect:
    """metric(b) − metric(a) for two configs differing only in one factor."""

    metric: str
    difference: Interval
    significant: bool | None  # the interval excludes 0; None without an interval


@dataclass(frozen=True)
class Comparison:
    factor: str
    a: Config
    b: Config
    effects: tuple[Effect, ...]


@dataclass(frozen=True)
class Finding:
    question: str
    factors: tuple[str, ...]
    comparisons: tuple[Comparison, ...]
    unanswered: tuple[str, ...]  # one line per factor no pair of configs isolates


def differing(a: Config, b: Config) -> set[str]:
    """The parameters two configs differ in (the ignored ones aside)."""
    pa, pb = a.row.params, b.row.params
    return {k for k in set(pa) | set(pb) if k not in IGNORED and pa.get(k) != pb.get(k)}


def effect(a: Config, b: Config, metric: str, seed: int = 0) -> Effect | None:
    """b − a in metric: over seeds when both have replicates (unpaired), over the tracks both scored
    when each is one run with per-track scores (paired), else the plain difference without interval."""
    va, unit_a, la = samples(a.runs, metric)
    vb, unit_b, lb = samples(b.runs, metric)
    if not va or not vb:
        return None
    if unit_a == unit_b == statistics.UNIT_TRACKS:
        common = sorted(set(la) & set(lb))
        xa = [v for v, label in zip(va, la, strict=True) if label in common]
        xb = [v for v, label in zip(vb, lb, strict=True) if label in common]
        difference = statistics.difference_of_means(xb, xa, unit=unit_a, paired=True, seed=seed)
    elif unit_a == unit_b:
        difference = statistics.difference_of_means(vb, va, unit=unit_a, paired=False, seed=seed)
    else:  # one side has replicates, the other per-track scores: no common unit
        difference = statistics.difference_of_means([vb[0]], [va[0]], unit="runs", paired=False)
    significant = None if not difference.defined else not difference.contains(0.0)
    return Effect(metric, difference, significant)


def find(configs: Sequence[Config], seed: int = 0) -> list[Finding]:
    """Each research question's comparisons (every pair of configs differing only in its factor)."""
    found = []
    for question, factors in QUESTIONS.items():
        comparisons, unanswered = [], []
        for factor in factors:
            pairs = [
                _ordered(a, b, factor)
                for i, a in enumerate(configs)
                for b in configs[i + 1 :]
                if differing(a, b) == {factor}
            ]
            for a, b in pairs:
                effects = tuple(e for m in EFFECTS if (e := effect(a, b, m, seed)) is not None)
                comparisons.append(Comparison(factor, a, b, effects))
            if not pairs:
                unanswered.append(_why_not(configs, factor))
        found.append(Finding(question, factors, tuple(comparisons), tuple(unanswered)))
    return found


def _ordered(a: Config, b: Config, factor: str) -> tuple[Config, Config]:
    """The pair with the smaller (or False) value of the factor first: effects read 'from a to b'."""
    va, vb = a.row.params.get(factor), b.row.params.get(factor)
    return (b, a) if va is not None and vb is not None and vb < va else (a, b)


def _why_not(configs: Sequence[Config], factor: str) -> str:
    """Why no comparison isolates factor, with the closest confounded pair."""
    close = [
        (len(d), a.name, b.name, sorted(d - {factor}))
        for i, a in enumerate(configs)
        for b in configs[i + 1 :]
        if factor in (d := differing(a, b))
    ]
    if not close:
        return f"{factor}: every config has the same value; add a config that changes it"
    _, a, b, others = min(close)
    return (
        f"{factor}: no two configs differ in it alone (closest: {a} vs {b}, which also differ in "
        f"{', '.join(others)}); add a config that changes only {factor}"
    )


def _signed(metric: str, value: float) -> str:
    """A difference as text: signed h:mm:ss for training time, else 3 significant digits."""
    if metric == tracking.TRAIN_SECONDS:
        return ("-" if value < 0 else "+") + hms(abs(value))
    return f"{value:+.3g}"


def _text(e: Effect) -> str:
    value = _signed(e.metric, e.difference.estimate)
    if e.difference.low is None or e.difference.high is None:
        return f"{e.metric} {value} (no interval: one value each)"
    interval = f"[{_signed(e.metric, e.difference.low)}, {_signed(e.metric, e.difference.high)}]"
    verdict = "significant" if e.significant else "within noise"
    return f"{e.metric} {value} {interval} over {e.difference.n} {e.difference.unit}, {verdict}"


def _per_hour(c: Comparison) -> str:
    """Epochs: what the extra training bought per hour of it, in SDR and validation loss."""
    by = {e.metric: e.difference.estimate for e in c.effects}
    hours = by.get(tracking.TRAIN_SECONDS, 0.0) / 3600
    if hours <= 0 or "SDR" not in by or tracking.VALID_LOSS not in by:
        return ""
    sdr, loss = by["SDR"] / hours, by[tracking.VALID_LOSS] / hours
    return f" Per hour of extra training: SDR {sdr:+.3g} dB, valid loss {loss:+.3g}."


def _speed(c: Comparison) -> str:
    """Unidirectional vs bidirectional: the real-time factors the two configs logged."""
    parts = []
    for config in (c.a, c.b):
        rtf = config.row.rtf
        stream = config.row.metric(tracking.REALTIME_FACTOR_STREAMING)
        if rtf is not None:
            text = f"{config.name}: rtf {rtf:.3g}"
            parts.append(text + (f", streaming {stream:.3g}" if stream is not None else ""))
    return f" Real-time factors: {'; '.join(parts)}." if parts else ""


def markdown(found: Sequence[Finding]) -> str:
    """The findings as a markdown section: per question its comparisons, effects with intervals and
    verdicts, and the runs they rest on; or why it cannot be answered."""
    lines = ["## Findings", ""]
    for finding in found:
        lines.append(f"**{finding.question}**")
        for c in finding.comparisons:
            va, vb = c.a.row.params.get(c.factor), c.b.row.params.get(c.factor)
            effects = "; ".join(_text(e) for e in c.effects)
            extra = (
                _per_hour(c) if c.factor == "epochs" else _speed(c) if c.factor == "unidirectional" else ""
            )
            runs = ", ".join(r.run_id[:8] for r in (*c.a.runs, *c.b.runs))
            lines.append(
                f"- {c.factor} {va} → {vb} ({c.a.name} → {c.b.name}): {effects}.{extra} Runs: {runs}."
            )
        lines.extend(f"- Cannot answer: {why}." for why in finding.unanswered)
        lines.append("")
    higher = ", ".join(m for m, up in SUMMARISED.items() if up)
    lines.append(
        f"Effects are b − a (higher is better for {higher}; lower for loss and time), with 95% bootstrap "
        "intervals; 'significant' means the interval excludes 0."
    )
    return "\n".join(lines) + "\n"
