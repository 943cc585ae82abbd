"""The study's results read back from MLflow: the original study's two tables, plots, the UI note.

Runs become `RunRow`s (params, latest metrics, per-epoch loss curves). The two tables of STUDY.md
(training parameters with final loss and training time; SDR/SIR/ISR/SAR per config) are declared
once as `Column`s, demucs-style, and rendered as markdown, csv, json or html from that declaration.
"""

from __future__ import annotations

import csv
import html
import io
import json
import re
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.entities import Run, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from umx_tune import tracking
from umx_tune.config import coerce, param_fields
from umx_tune.errors import UmxTuneError
from umx_tune.summary import hms

MISSING = "—"
MISSING_NOTE = f"{MISSING} = not in MLflow (run unfinished, failed or pruned)"
PLOTS_ARTIFACT_PATH = "report"
# MLflow rejects tag values longer than this (mlflow.utils.validation.MAX_TAG_VAL_LENGTH)
NOTE_LIMIT = 8000
CURVE_METRICS = (tracking.TRAIN_LOSS, tracking.VALID_LOSS, tracking.EPOCH_SECONDS)


class ReportError(UmxTuneError):
    """Nothing can be reported: the study, experiment or run does not exist or holds no runs."""


@dataclass
class RunRow:
    """One run as the report sees it; absent values are None."""

    run_id: str
    name: str
    state: str
    params: dict[str, Any]
    metrics: dict[str, float]
    # metric name -> [(epoch, value)], sorted by epoch
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    grid_entry: str | None = None
    trial_number: int | None = None
    start_time: int = 0

    def metric(self, name: str) -> float | None:
        return self.metrics.get(name)

    @property
    def train_seconds(self) -> float | None:
        """Total training time; for a run stopped early (pruned, killed), the epochs it finished."""
        if tracking.TRAIN_SECONDS in self.metrics:
            return self.metrics[tracking.TRAIN_SECONDS]
        epochs = self.curves.get(tracking.EPOCH_SECONDS)
        return sum(v for _, v in epochs) if epochs else None


@dataclass
class Report:
    """The runs of a study, an experiment or a list of run ids, in report order."""

    title: str
    rows: list[RunRow]
    study: str | None = None
    parent_run_id: str | None = None
    experiment_id: str | None = None


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


# ---- reading runs back from MLflow -------------------------------------------------------------


def _client() -> MlflowClient:
    tracking.check_server()
    return MlflowClient()


def _where() -> str:
    return f"on {tracking.tracking_uri()}"


def _all_pages(search: Callable[[str | None], Any]) -> list[Any]:
    """Every item of a paged MLflow search (search takes a page token, returns a PagedList)."""
    items: list[Any] = []
    token: str | None = None
    while True:
        page = search(token)
        items.extend(page)
        token = page.token
        if not token:
            return items


def _literal(value: str) -> str:
    """A string literal for MLflow's filter syntax (which has no escapes: pick the other quote)."""
    if "'" in value and '"' in value:
        raise ReportError(f"name {value!r} holds both kinds of quote; MLflow cannot search for it")
    return f'"{value}"' if "'" in value else f"'{value}'"


def _search_runs(client: MlflowClient, experiment_ids: list[str], filter_string: str = "") -> list[Run]:
    return _all_pages(
        lambda token: client.search_runs(
            experiment_ids, filter_string, ViewType.ACTIVE_ONLY, max_results=1000, page_token=token
        )
    )


def _experiment_ids(client: MlflowClient, experiment: str | None) -> list[str]:
    """The named experiment's id, or every active experiment's when no name is given."""
    if experiment is None:
        found = _all_pages(lambda token: client.search_experiments(page_token=token))
        return [e.experiment_id for e in found]
    exp = client.get_experiment_by_name(experiment)
    if exp is None or exp.lifecycle_stage != "active":
        raise ReportError(f"no experiment named {experiment!r} {_where()}")
    return [exp.experiment_id]


def _is_study_parent(run: Run) -> bool:
    tags = run.data.tags
    return tracking.TAG_STUDY in tags and tracking.TAG_PARENT_RUN not in tags


def _typed_params(params: dict[str, str]) -> dict[str, Any]:
    """MLflow params are strings; TrainConfig's are typed back (unknown ones stay strings)."""
    fields = {f.name: f for f in param_fields()}
    typed: dict[str, Any] = {}
    for name, text in params.items():
        try:
            typed[name] = coerce(fields[name], text) if name in fields else text
        except UmxTuneError:
            typed[name] = text
    return typed


def _int_or_none(text: str | None) -> int | None:
    return int(text) if text is not None and text.lstrip("-").isdigit() else None


def _row(client: MlflowClient, run: Run) -> RunRow:
    """A RunRow from an MLflow run, fetching the per-epoch histories it has."""
    tags = run.data.tags
    curves = {
        key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        for key in CURVE_METRICS
        if key in run.data.metrics
    }
    entry = tags.get(tracking.TAG_GRID_ENTRY) or None
    return RunRow(
        run_id=run.info.run_id,
        name=entry or run.info.run_name or run.info.run_id[:8],
        state=tags.get(tracking.TAG_TRIAL_STATE) or run.info.status,
        params=_typed_params(run.data.params),
        metrics=dict(run.data.metrics),
        curves=curves,
        grid_entry=entry,
        trial_number=_int_or_none(tags.get(tracking.TAG_TRIAL_NUMBER)),
        start_time=run.info.start_time or 0,
    )


def _natural(text: str) -> list[Any]:
    """Sort key in which 'open-unmix10' follows 'open-unmix9'."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _ordered(rows: Iterable[RunRow]) -> list[RunRow]:
    """Grid entries first, in natural order; then trial number; then start time. Names made unique."""
    big = float("inf")

    def key(row: RunRow) -> tuple[Any, ...]:
        entry = _natural(row.grid_entry) if row.grid_entry else []
        number = row.trial_number if row.trial_number is not None else big
        return (row.grid_entry is None, entry, number, row.start_time)

    ordered = sorted(rows, key=key)
    seen: dict[str, int] = {}
    for row in ordered:
        seen[row.name] = seen.get(row.name, 0) + 1
        if seen[row.name] > 1:  # a retried grid entry: tell the runs apart by trial or run id
            suffix = f"trial {row.trial_number}" if row.trial_number is not None else row.run_id[:8]
            row.name = f"{row.name} ({suffix})"
    return ordered


def _study_runs(client: MlflowClient, study: str, experiment_ids: list[str]) -> tuple[Run | None, list[Run]]:
    """The study's parent run (the newest, should there be several) and its trial runs.

    Trials are the runs tagged with the study that are nested, plus any other run nested under the
    parent (so that a trial whose tags were not yet written still shows up).
    """
    tagged = _search_runs(client, experiment_ids, f"tags.`{tracking.TAG_STUDY}` = {_literal(study)}")
    parents = sorted((r for r in tagged if _is_study_parent(r)), key=lambda r: r.info.start_time or 0)
    parent = parents[-1] if parents else None
    trials = {r.info.run_id: r for r in tagged if not _is_study_parent(r)}
    if parent is not None:
        nested = f"tags.`{tracking.TAG_PARENT_RUN}` = '{parent.info.run_id}'"
        for run in _search_runs(client, [parent.info.experiment_id], nested):
            trials.setdefault(run.info.run_id, run)
    return parent, list(trials.values())


def load_study(study: str, experiment: str | None = None) -> Report:
    """The trials of the study named `study` (in `experiment`, or in any experiment)."""
    client = _client()
    parent, trials = _study_runs(client, study, _experiment_ids(client, experiment))
    if parent is None and not trials:
        where = f"in experiment {experiment!r} " if experiment else ""
        raise ReportError(f"no study named {study!r} {where}{_where()}")
    if not trials:
        raise ReportError(f"study {study!r} has no trial runs yet")
    rows = _ordered(_row(client, run) for run in trials)
    parent_id = parent.info.run_id if parent else None
    experiment_id = (parent or trials[0]).info.experiment_id
    return Report(f"study {study}", rows, study=study, parent_run_id=parent_id, experiment_id=experiment_id)


def load_experiment(experiment: str) -> Report:
    """Every run of an experiment, except study parent runs (their trials are listed instead)."""
    client = _client()
    runs = [r for r in _search_runs(client, _experiment_ids(client, experiment)) if not _is_study_parent(r)]
    if not runs:
        raise ReportError(f"experiment {experiment!r} has no runs")
    return Report(f"experiment {experiment}", _ordered(_row(client, run) for run in runs))


def load_runs(run_ids: Sequence[str]) -> Report:
    """The given runs, in report order."""
    client = _client()
    runs = []
    for run_id in run_ids:
        try:
            runs.append(client.get_run(run_id))
        except MlflowException:
            raise ReportError(f"no run with id {run_id!r} {_where()}") from None
    return Report(f"{len(runs)} runs", _ordered(_row(client, run) for run in runs))


# ---- tables and formats ------------------------------------------------------------------------


def columns(report: Report, table: Sequence[Column]) -> list[Column]:
    """The table's columns, without optional ones no run has a value for."""
    return [c for c in table if not c.optional or any(c.value(row) is not None for row in report.rows)]


def _cell(column: Column, row: RunRow) -> str:
    value = column.value(row)
    return MISSING if value is None else column.text(value)


def _markdown_table(report: Report, table: Sequence[Column], rows: Sequence[RunRow]) -> str:
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


def _target(report: Report) -> str:
    targets = sorted({str(row.params.get("target", "vocals")) for row in report.rows})
    return ", ".join(targets)


def markdown(report: Report, rows: Sequence[RunRow] | None = None) -> str:
    """Both tables as markdown, with a title and a legend for missing values."""
    rows = report.rows if rows is None else rows
    parts = [
        f"## {report.title}: training",
        _markdown_table(report, TRAINING_COLUMNS, rows),
        f"## {report.title}: separation of {_target(report)} (BSSEval v4, dB)",
        _markdown_table(report, SCORE_COLUMNS, rows),
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
        _html_table(report, SCORE_COLUMNS, f"separation of {_target(report)} (BSSEval v4, dB)"),
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


def ui_url(report: Report) -> str | None:
    """Where the MLflow UI shows the study's runs side by side (None without a study).

    The UI opens in its model-training mode and filtered to the study's runs; a local sqlite store
    is served by `mlflow ui` on port 5000.
    """
    if not (report.study and report.experiment_id):
        return None
    uri = tracking.tracking_uri()
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    query = urllib.parse.urlencode(
        {
            "workflowType": "machine_learning",
            "searchFilter": f"tags.`{tracking.TAG_STUDY}` = '{report.study}'",
        },
        quote_via=urllib.parse.quote,
    )
    return f"{base}/#/experiments/{report.experiment_id}/runs?{query}"


# ---- plots -------------------------------------------------------------------------------------


def write_plots(report: Report, folder: Path) -> list[Path]:
    """The study's PNGs in folder; a plot no run has data for is left out."""
    from umx_tune import plots  # matplotlib only when plots are asked for

    folder.mkdir(parents=True, exist_ok=True)
    rows, title = report.rows, report.title
    written: list[Path] = []
    curves = {
        r.name: (r.curves.get(tracking.TRAIN_LOSS, []), r.curves.get(tracking.VALID_LOSS, []))
        for r in rows
        if r.curves.get(tracking.TRAIN_LOSS) or r.curves.get(tracking.VALID_LOSS)
    }
    if curves:
        written.append(
            plots.study_loss_curves_png(curves, folder / "loss_curves.png", f"{title}: loss curves")
        )
    metrics = tracking.SEPARATION_METRICS
    scores = {r.name: {m: r.metrics[m] for m in metrics if m in r.metrics} for r in rows}
    if any(scores.values()):
        scores_title = f"{title}: {_target(report)} separation (BSSEval v4)"
        written.append(plots.study_scores_png(scores, metrics, folder / "scores.png", scores_title))
    timed = {
        r.name: (seconds, loss)
        for r in rows
        if (seconds := r.train_seconds) is not None and (loss := r.metric(tracking.VALID_LOSS)) is not None
    }
    if timed:
        written.append(
            plots.loss_vs_time_png(
                timed, folder / "loss_vs_time.png", f"{title}: final loss against training time"
            )
        )
    speed = {
        r.name: (rtf, sdr, bool(r.params.get("unidirectional", False)))
        for r in rows
        if (rtf := r.metric(tracking.REALTIME_FACTOR)) is not None and (sdr := r.metric("SDR")) is not None
    }
    if speed:
        written.append(
            plots.sdr_vs_rtf_png(speed, folder / "sdr_vs_rtf.png", f"{title}: SDR against real-time factor")
        )
    return written


def log_plots(report: Report, run_id: str) -> list[str]:
    """Write the plots and log them as artifacts of run_id (under report/); their artifact paths."""
    client = _client()
    with tracking.artifact_tempdir() as tmp:
        written = write_plots(report, Path(tmp))
        if written:
            client.log_artifacts(run_id, tmp, PLOTS_ARTIFACT_PATH)
    return [f"{PLOTS_ARTIFACT_PATH}/{path.name}" for path in written]


# ---- the parent run's description in the MLflow UI ---------------------------------------------


def _summary(report: Report) -> str:
    """One line: how many trials in which state, and the best SDR."""
    states = Counter(row.state for row in report.rows)
    line = f"**{len(report.rows)} trials** (" + ", ".join(f"{n} {s.lower()}" for s, n in states.items()) + ")"
    scored = [row for row in report.rows if row.metric("SDR") is not None]
    if scored:
        best = max(scored, key=lambda row: row.metrics["SDR"])
        line += f"; best SDR {best.metrics['SDR']:.3f} dB: **{best.name}**"
    return line + "."


def note(report: Report, plot_paths: Sequence[str] = ()) -> str:
    """The parent run's description: a summary line, then the scores and the training table.

    Scores come first because the UI folds a long description after its first lines. Tables keep
    as many rows as MLflow's tag limit allows.
    """
    command = f"umx-tune report --study '{report.study}'" if report.study else "umx-tune report"
    total = len(report.rows)
    footer = f"\nFull report: `{command}`.\n"
    if plot_paths:
        footer += "Plots (artifacts of this run): " + ", ".join(f"`{p}`" for p in plot_paths) + ".\n"

    def text(keep: int) -> str:
        rows = report.rows[:keep]
        parts = [
            _summary(report),
            f"#### separation of {_target(report)} (BSSEval v4, dB)",
            _markdown_table(report, SCORE_COLUMNS, rows),
            "#### training",
            _markdown_table(report, TRAINING_COLUMNS, rows),
            MISSING_NOTE + ("" if keep == total else f"; first {keep} of {total} trials shown"),
        ]
        return "\n\n".join(parts) + "\n" + footer

    # the largest number of rows that fits, found by bisection (a search study has hundreds)
    low, high = 0, total
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if len(text(middle)) <= NOTE_LIMIT else (low, middle - 1)
    return text(low) if low else _summary(report) + "\n" + footer


def describe_study(parent_run_id: str) -> str:
    """Set a study parent run's MLflow description (`mlflow.note.content`) to its results tables.

    The optimize command calls this when a study ends; `umx-tune report --study` refreshes it.
    Describes the runs nested under the parent; returns the text set.
    """
    client = _client()
    try:
        parent = client.get_run(parent_run_id)
    except MlflowException:
        raise ReportError(f"no run with id {parent_run_id!r} {_where()}") from None
    study = parent.data.tags.get(tracking.TAG_STUDY)
    nested = f"tags.`{tracking.TAG_PARENT_RUN}` = '{parent_run_id}'"
    runs = _search_runs(client, [parent.info.experiment_id], nested)
    title = f"study {study}" if study else (parent.info.run_name or parent_run_id)
    rows = _ordered(_row(client, run) for run in runs)
    report = Report(title, rows, study=study, parent_run_id=parent_run_id)
    return set_note(report)


def set_note(report: Report, plot_paths: Sequence[str] = ()) -> str:
    """Write note(report) to the report's parent run; returns the text."""
    if report.parent_run_id is None:
        raise ReportError(f"{report.title} has no parent run to describe")
    text = note(report, plot_paths) if report.rows else "No trial runs yet.\n"
    _client().set_tag(report.parent_run_id, tracking.TAG_NOTE, text)
    return text
