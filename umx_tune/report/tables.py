"""The original study's two tables (training parameters with final loss and training time;
SDR/SIR/ISR/SAR per config), declared once as `Column`s, demucs-style, and rendered as markdown,
csv, json or html from that declaration."""

from __future__ import annotations

import csv
import datetime
import html
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from umx_tune import tracking
from umx_tune.errors import ReportError
from umx_tune.evaluation.statistics import Mark
from umx_tune.report import uncertainty
from umx_tune.report.uncertainty import Config

if TYPE_CHECKING:  # this module imports no MLflow: `umx-tune report --help` reads FORMATS
    from umx_tune.report.runs import Report, RunRow


def hms(seconds: float) -> str:
    """Seconds as h:mm:ss."""
    return str(datetime.timedelta(seconds=round(seconds)))


MISSING = "—"
MISSING_NOTE = f"{MISSING} = not in MLflow (run unfinished, failed or pruned)"
# what the cost columns are: measures other processes on the machine barely change
COST_NOTE = (
    "training compute = CPU core-seconds of training on a CPU (wall time on a GPU); "
    "rtf = CPU time of one thread separating / audio duration (wall time on a GPU)"
)
LOADED_NOTE = "load average above 1.5 per core: their compute times hold, wall times do not"


@dataclass(frozen=True)
class Column:
    """A table column: `key` names it in csv/json (raw value), `header` and `text` in tables.

    A column of a summarised metric (`metric`) shows the config's value with its interval."""

    key: str
    header: str
    value: Callable[[RunRow], Any]
    text: Callable[[Any], str] = str
    # optional columns (the real-time ones) are shown only when some run has a value
    optional: bool = False
    left: bool = False
    metric: str | None = None


def _number(spec: str) -> Callable[[Any], str]:
    return lambda value: format(value, spec)


def _param_column(name: str) -> Column:
    return Column(name, name, lambda row: row.params.get(name))


def _direction(value: bool) -> str:
    return "unidirectional" if value else "bidirectional"


def _score_column(name: str, spec: str = ".3f", optional: bool = False) -> Column:
    summarised = name if name in uncertainty.SUMMARISED else None
    return Column(
        name, name, lambda row: row.metric(name), _number(spec), optional=optional, metric=summarised
    )


NAME_COLUMN = Column("name", "name", lambda row: row.name, left=True)
TRAINING_COLUMNS: tuple[Column, ...] = (
    NAME_COLUMN,
    *(_param_column(n) for n in ("batch_size", "nb_workers", "hidden_size", "samples_per_track", "epochs")),
    Column("unidirectional", "LSTM", lambda row: row.params.get("unidirectional"), _direction, left=True),
    Column(
        "train_loss",
        "final train loss",
        lambda row: row.metric(tracking.TRAIN_LOSS),
        _number(".4g"),
        metric=tracking.TRAIN_LOSS,
    ),
    Column(
        "valid_loss",
        "final valid loss",
        lambda row: row.metric(tracking.VALID_LOSS),
        _number(".4g"),
        metric=tracking.VALID_LOSS,
    ),
    Column(
        "train_seconds", "training compute", lambda row: row.train_seconds, hms, metric=tracking.TRAIN_SECONDS
    ),
    Column("state", "state", lambda row: row.state, left=True),
)
SCORE_COLUMNS: tuple[Column, ...] = (
    NAME_COLUMN,
    *(_score_column(m) for m in tracking.SEPARATION_METRICS),
    _score_column(tracking.GLOBAL_SDR, optional=True),  # runs scored before it was logged have none
    Column("rtf", "rtf", lambda row: row.rtf, _number(".3g"), optional=True),
    _score_column(tracking.REALTIME_FACTOR_STREAMING, ".3g", optional=True),
)
# what each table ranks by: its mark column says which config is best and which are not worse
RANKINGS = {TRAINING_COLUMNS: uncertainty.TRAINING_RANKING, SCORE_COLUMNS: uncertainty.SCORES_RANKING}
MARK_TEXT = {Mark.BEST: "best", Mark.NOT_WORSE: "≈ best", Mark.WORSE: "", Mark.UNTESTED: ""}
MARK_NOTE = "≈ best = not significantly worse than the best (the 95% interval of the difference reaches 0)"


def configs(report: Report) -> list[Config]:
    """The report's configs (a grid entry's replicates together), each value with its interval."""
    return uncertainty.summarize(report.rows)


def columns(report: Report, table: Sequence[Column]) -> list[Column]:
    """The table's columns, without optional ones no run has a value for."""
    return [c for c in table if not c.optional or any(c.value(row) is not None for row in report.rows)]


def _cell(column: Column, config: Config) -> str:
    value = column.value(config.row)
    if value is None:
        return MISSING
    interval = config.intervals.get(column.metric) if column.metric else None
    if interval is None or not interval.defined:
        return column.text(value)
    return f"{column.text(interval.estimate)} [{column.text(interval.low)}, {column.text(interval.high)}]"


def _mark(table: Sequence[Column], config: Config) -> str:
    mark = config.marks.get(RANKINGS[tuple(table)])
    return MARK_TEXT[mark] if mark is not None else ""


def markdown_table(report: Report, table: Sequence[Column], shown: Sequence[Config]) -> str:
    cols = columns(report, table)
    headers = [c.header for c in cols] + [f"by {RANKINGS[tuple(table)]}"]
    cells = [[_cell(c, config) for c in cols] + [_mark(table, config)] for config in shown]
    lefts = [c.left for c in cols] + [True]
    widths = [max(len(h), *(len(line[i]) for line in cells)) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        padded = (
            v.ljust(w) if left else v.rjust(w) for v, w, left in zip(values, widths, lefts, strict=True)
        )
        return "| " + " | ".join(padded) + " |"

    # markdown alignment row: numbers right-aligned ("---:"), names left
    marks = ("-" * (w + 2) if left else "-" * (w + 1) + ":" for w, left in zip(widths, lefts, strict=True))
    rule = "|" + "|".join(marks) + "|"
    return "\n".join([line(headers), rule, *(line(v) for v in cells)])


def target_label(report: Report) -> str:
    targets = sorted({str(row.params.get("target", "vocals")) for row in report.rows})
    return ", ".join(targets)


def legend(summaries: Sequence[Config]) -> str:
    """What the values and intervals are, and over what they were drawn."""
    replicated = [c for c in summaries if c.replicates > 1]
    parts = []
    if replicated:
        seeds = sorted({c.replicates for c in replicated})
        parts.append(f"a config of {'/'.join(map(str, seeds))} replicates: the mean over its seeds [95% CI]")
    if any(c.replicates == 1 for c in summaries):
        parts.append(
            "a config of one run: its own values; SDR/SIR/ISR/SAR (median over tracks) [95% CI over its "
            "test tracks] where it records per-track scores"
        )
    parts.append("percentile bootstrap, 2000 resamples, seed 0")
    text = "Values: " + "; ".join(parts) + ". " + MARK_NOTE + ". " + MISSING_NOTE + ". " + COST_NOTE + "."
    loaded = [c.name for c in summaries if any(run.loaded for run in c.runs)]
    if loaded:
        text += f" Measured on a loaded machine: {', '.join(loaded)} ({LOADED_NOTE})."
    return text


def markdown(report: Report, protocol: str | None = None) -> str:
    """Both tables as markdown, with a title, the protocol and a legend."""
    shown = configs(report)
    parts = [
        f"## {report.title}: training",
        markdown_table(report, TRAINING_COLUMNS, shown),
        f"## {report.title}: separation of {target_label(report)} (BSSEval v4, dB)",
        markdown_table(report, SCORE_COLUMNS, shown),
        legend(shown),
        _findings(shown),
    ]
    if protocol:
        parts.insert(0, f"Evaluation protocol: {protocol}")
    return "\n\n".join(parts)


def _findings(shown: Sequence[Config]) -> str:
    """The findings section (markdown) on the study's research questions."""
    from umx_tune.report import findings  # it formats times with this module's hms

    return findings.markdown(findings.find(shown))


def _record_columns(report: Report) -> list[Column]:
    """Every column of both tables once, name first (the csv header and the json keys)."""
    keys: dict[str, Column] = {}
    for column in (*columns(report, TRAINING_COLUMNS), *columns(report, SCORE_COLUMNS)):
        keys.setdefault(column.key, column)
    return list(keys.values())


def records(report: Report) -> list[dict[str, Any]]:
    """One dict per config with raw values (seconds as numbers, None where missing), each
    summarised value's interval (`<key>_low`, `_high`, `_n`, `_unit`), its marks and runs."""
    cols = _record_columns(report)
    result = []
    for config in configs(report):
        row = config.row
        record: dict[str, Any] = {}
        for c in cols:
            record[c.key] = c.value(row)
            interval = config.intervals.get(c.metric) if c.metric else None
            if interval is not None:
                record[c.key] = interval.estimate
                record.update({f"{c.key}_low": interval.low, f"{c.key}_high": interval.high})
                record.update({f"{c.key}_n": interval.n, f"{c.key}_unit": interval.unit})
        for ranking in RANKINGS.values():
            mark = config.marks.get(ranking)
            record[f"mark_{ranking}"] = mark.value if mark is not None else None
        record.update(
            {
                "replicates": config.replicates,
                "run_id": ",".join(r.run_id for r in config.runs),
                "grid_entry": row.grid_entry,
                "trial_number": row.trial_number,
            }
        )
        result.append(record)
    return result


def to_csv(report: Report, protocol: str | None = None) -> str:
    """One header line and one line per config; missing values are empty cells."""
    buffer = io.StringIO()
    rows = records(report)
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in rows)
    return buffer.getvalue()


def to_json(report: Report, protocol: str | None = None) -> str:
    """The configs as records, plus which keys make up each of the two tables."""
    document = {
        "title": report.title,
        "study": report.study,
        "parent_run_id": report.parent_run_id,
        "protocol": protocol,
        "tables": {
            "training": [c.key for c in columns(report, TRAINING_COLUMNS)],
            "scores": [c.key for c in columns(report, SCORE_COLUMNS)],
        },
        "runs": records(report),
    }
    return json.dumps(document, indent=2) + "\n"


def html_table(report: Report, table: Sequence[Column], caption: str, shown: Sequence[Config]) -> str:
    cols = columns(report, table)

    def cell(tag: str, text: str, left: bool) -> str:
        align = "left" if left else "right"
        return f'<{tag} style="text-align:{align}">{html.escape(text)}</{tag}>'

    ranking = RANKINGS[tuple(table)]
    head = "".join(cell("th", c.header, c.left) for c in cols) + cell("th", f"by {ranking}", True)
    body = "\n".join(
        "<tr>"
        + "".join(cell("td", _cell(c, config), c.left) for c in cols)
        + cell("td", _mark(table, config), True)
        + "</tr>"
        for config in shown
    )
    return (
        f"<table>\n<caption>{html.escape(caption)}</caption>\n"
        f"<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"
    )


HTML_STYLE = (
    "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0 2em}"
    "th,td{border:1px solid #ccc;padding:.3em .6em}caption{font-weight:bold;text-align:left}"
)


def html_document(title: str, body: str, style: str = "") -> str:
    """A standalone HTML page of title (plain text) and body (HTML), with the tables' style."""
    title = html.escape(title)
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{HTML_STYLE}{style}</style></head>\n<body>\n<h1>{title}</h1>\n{body}</body>\n</html>\n"
    )


def html_tables(report: Report, protocol: str | None, shown: Sequence[Config]) -> str:
    """The protocol, both tables, their legend and the findings, as HTML."""
    tables = [
        html_table(report, TRAINING_COLUMNS, "training", shown),
        html_table(report, SCORE_COLUMNS, f"separation of {target_label(report)} (BSSEval v4, dB)", shown),
    ]
    header = f"<p>Evaluation protocol: {html.escape(protocol)}</p>\n" if protocol else ""
    return (
        header
        + "\n".join(tables)
        + f"\n<p>{html.escape(legend(shown))}</p>\n"
        + f"<pre>{html.escape(_findings(shown))}</pre>\n"
    )


def to_html(report: Report, protocol: str | None = None) -> str:
    """A standalone HTML page with both tables."""
    return html_document(f"umx-tune report: {report.title}", html_tables(report, protocol, configs(report)))


RENDERERS: dict[str, Callable[[Report, str | None], str]] = {
    "markdown": markdown,
    "csv": to_csv,
    "json": to_json,
    "html": to_html,
}


FORMATS = tuple(RENDERERS)


def render(report: Report, fmt: str, protocol: str | None = None) -> str:
    """The report in one of FORMATS, under the evaluation protocol its runs share."""
    if fmt not in RENDERERS:
        raise ReportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return RENDERERS[fmt](report, protocol)
