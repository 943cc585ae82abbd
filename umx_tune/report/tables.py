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

if TYPE_CHECKING:  # this module imports no MLflow: `umx-tune report --help` reads FORMATS
    from umx_tune.report.runs import Report, RunRow


def hms(seconds: float) -> str:
    """Seconds as h:mm:ss."""
    return str(datetime.timedelta(seconds=round(seconds)))


MISSING = "—"
MISSING_NOTE = f"{MISSING} = not in MLflow (run unfinished, failed or pruned)"


@dataclass(frozen=True)
class Column:
    """A table column: `key` names it in csv/json (raw value), `header` and `text` in tables."""

    key: str
    header: str
    value: Callable[[RunRow], Any]
    text: Callable[[Any], str] = str
    # optional columns (the real-time ones) are shown only when some run has a value
    optional: bool = False
    left: bool = False


def _number(spec: str) -> Callable[[Any], str]:
    return lambda value: format(value, spec)


def _param_column(name: str) -> Column:
    return Column(name, name, lambda row: row.params.get(name))


def _direction(value: bool) -> str:
    return "unidirectional" if value else "bidirectional"


def _score_column(name: str, spec: str = ".3f", optional: bool = False) -> Column:
    return Column(name, name, lambda row: row.metric(name), _number(spec), optional=optional)


NAME_COLUMN = Column("name", "name", lambda row: row.name, left=True)
TRAINING_COLUMNS: tuple[Column, ...] = (
    NAME_COLUMN,
    *(_param_column(n) for n in ("batch_size", "nb_workers", "hidden_size", "samples_per_track", "epochs")),
    Column("unidirectional", "LSTM", lambda row: row.params.get("unidirectional"), _direction, left=True),
    Column("train_loss", "final train loss", lambda row: row.metric(tracking.TRAIN_LOSS), _number(".4g")),
    Column("valid_loss", "final valid loss", lambda row: row.metric(tracking.VALID_LOSS), _number(".4g")),
    Column("train_seconds", "training time", lambda row: row.train_seconds, hms),
    Column("state", "state", lambda row: row.state, left=True),
)
SCORE_COLUMNS: tuple[Column, ...] = (
    NAME_COLUMN,
    *(_score_column(m) for m in tracking.SEPARATION_METRICS),
    _score_column(tracking.REALTIME_FACTOR, ".3g", optional=True),
    _score_column(tracking.REALTIME_FACTOR_STREAMING, ".3g", optional=True),
)


def columns(report: Report, table: Sequence[Column]) -> list[Column]:
    """The table's columns, without optional ones no run has a value for."""
    return [c for c in table if not c.optional or any(c.value(row) is not None for row in report.rows)]


def _cell(column: Column, row: RunRow) -> str:
    value = column.value(row)
    return MISSING if value is None else column.text(value)


def markdown_table(report: Report, table: Sequence[Column], rows: Sequence[RunRow]) -> str:
    cols = columns(report, table)
    cells = [[_cell(c, row) for c in cols] for row in rows]
    widths = [max(len(c.header), *(len(line[i]) for line in cells)) for i, c in enumerate(cols)]

    def line(values: Sequence[str]) -> str:
        padded = (v.ljust(w) if c.left else v.rjust(w) for v, w, c in zip(values, widths, cols, strict=True))
        return "| " + " | ".join(padded) + " |"

    # markdown alignment row: numbers right-aligned ("---:"), names left
    marks = ("-" * (w + 2) if c.left else "-" * (w + 1) + ":" for w, c in zip(widths, cols, strict=True))
    rule = "|" + "|".join(marks) + "|"
    return "\n".join([line([c.header for c in cols]), rule, *(line(v) for v in cells)])


def target_label(report: Report) -> str:
    targets = sorted({str(row.params.get("target", "vocals")) for row in report.rows})
    return ", ".join(targets)


def markdown(report: Report, rows: Sequence[RunRow] | None = None) -> str:
    """Both tables as markdown, with a title and a legend for missing values."""
    rows = report.rows if rows is None else rows
    parts = [
        f"## {report.title}: training",
        markdown_table(report, TRAINING_COLUMNS, rows),
        f"## {report.title}: separation of {target_label(report)} (BSSEval v4, dB)",
        markdown_table(report, SCORE_COLUMNS, rows),
        MISSING_NOTE,
    ]
    return "\n\n".join(parts) + "\n"


def _record_columns(report: Report) -> list[Column]:
    """Every column of both tables once, name first (the csv header and the json keys)."""
    keys: dict[str, Column] = {}
    for column in (*columns(report, TRAINING_COLUMNS), *columns(report, SCORE_COLUMNS)):
        keys.setdefault(column.key, column)
    return list(keys.values())


def records(report: Report) -> list[dict[str, Any]]:
    """One dict per run with raw values (seconds as numbers, None where missing)."""
    cols = _record_columns(report)
    return [
        {
            **{c.key: c.value(row) for c in cols},
            "run_id": row.run_id,
            "grid_entry": row.grid_entry,
            "trial_number": row.trial_number,
        }
        for row in report.rows
    ]


def to_csv(report: Report) -> str:
    """One header line and one line per run; missing values are empty cells."""
    buffer = io.StringIO()
    rows = records(report)
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in rows)
    return buffer.getvalue()


def to_json(report: Report) -> str:
    """The runs as records, plus which keys make up each of the two tables."""
    document = {
        "title": report.title,
        "study": report.study,
        "parent_run_id": report.parent_run_id,
        "tables": {
            "training": [c.key for c in columns(report, TRAINING_COLUMNS)],
            "scores": [c.key for c in columns(report, SCORE_COLUMNS)],
        },
        "runs": records(report),
    }
    return json.dumps(document, indent=2) + "\n"


def _html_table(report: Report, table: Sequence[Column], caption: str) -> str:
    cols = columns(report, table)

    def cell(tag: str, text: str, column: Column) -> str:
        align = "left" if column.left else "right"
        return f'<{tag} style="text-align:{align}">{html.escape(text)}</{tag}>'

    head = "".join(cell("th", c.header, c) for c in cols)
    body = "\n".join(
        "<tr>" + "".join(cell("td", _cell(c, row), c) for c in cols) + "</tr>" for row in report.rows
    )
    return (
        f"<table>\n<caption>{html.escape(caption)}</caption>\n"
        f"<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"
    )


def to_html(report: Report) -> str:
    """A standalone HTML page with both tables."""
    title = html.escape(f"umx-tune report: {report.title}")
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0 2em}"
        "th,td{border:1px solid #ccc;padding:.3em .6em}caption{font-weight:bold;text-align:left}"
    )
    tables = [
        _html_table(report, TRAINING_COLUMNS, "training"),
        _html_table(report, SCORE_COLUMNS, f"separation of {target_label(report)} (BSSEval v4, dB)"),
    ]
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{style}</style></head>\n<body>\n<h1>{title}</h1>\n"
        + "\n".join(tables)
        + f"\n<p>{html.escape(MISSING_NOTE)}</p>\n</body>\n</html>\n"
    )


RENDERERS: dict[str, Callable[[Report], str]] = {
    "markdown": markdown,
    "csv": to_csv,
    "json": to_json,
    "html": to_html,
}


FORMATS = tuple(RENDERERS)


def render(report: Report, fmt: str) -> str:
    """The report in one of FORMATS."""
    if fmt not in RENDERERS:
        raise ReportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return RENDERERS[fmt](report)
