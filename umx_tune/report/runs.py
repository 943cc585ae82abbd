"""Runs read back from MLflow for the report: `RunRow`s (params, latest metrics, per-epoch loss
curves) of a study, an experiment or a list of run ids, in report order."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from umx_tune import tracking
from umx_tune.config import coerce, param_fields
from umx_tune.errors import ReportError, UmxTuneError
from umx_tune.evaluation.listen import Excerpt
from umx_tune.evaluation.protocol import Protocol, check_same
from umx_tune.tracking.client import Client, Run
from umx_tune.tracking.server import check_server, tracking_uri


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
    replicate: int | None = None  # a grid entry's replicate (0: the base seed)
    confirms: int | None = None  # --confirm-best: the search trial whose config this run re-runs
    # the target's per-track scores {track: {metric: dB}}, empty when the run records none
    track_scores: dict[str, dict[str, float]] = field(default_factory=dict)
    loaded: bool = False  # measured while the machine was busy with more (TAG_LOADED_MACHINE)
    protocol: Protocol | None = None  # how it was scored; None for runs scored before it was recorded
    excerpt: Excerpt | None = None  # the excerpt its audio/ artifacts hold; None: it logged none

    def metric(self, name: str) -> float | None:
        return self.metrics.get(name)

    @property
    def rtf(self) -> float | None:
        """The real-time factor a study compares (load-robust: rtf_compute); plain rtf for runs
        logged before rtf_compute was."""
        return self.metrics.get(tracking.REALTIME_FACTOR_COMPUTE, self.metrics.get(tracking.REALTIME_FACTOR))

    @property
    def train_seconds(self) -> float | None:
        """Training cost as a study compares it: its compute seconds (CPU core-seconds on a CPU, robust
        to other processes; wall seconds on a GPU); for runs logged before those were, the wall time;
        for a run stopped early (pruned, killed), the epochs it finished (wall time)."""
        for name in (tracking.TRAIN_COMPUTE_SECONDS, tracking.TRAIN_SECONDS):
            if name in self.metrics:
                return self.metrics[name]
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


def reading_client() -> Client:
    """The tracking client, once its server answers."""
    check_server()
    return Client()


def where() -> str:
    return f"on {tracking_uri()}"


def _experiment_ids(client: Client, experiment: str | None) -> list[str]:
    """The named experiment's id, or every active experiment's when no name is given."""
    if experiment is None:
        return client.experiment_ids()
    exp = client.find_experiment(experiment)
    if exp is None or exp.lifecycle_stage != "active":
        raise ReportError(f"no experiment named {experiment!r} {where()}")
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


def run_row(client: Client, run: Run) -> RunRow:
    """A RunRow from an MLflow run: its curves from its curves tag, else (runs logged before the
    tag, or of hundreds of epochs) from its metric histories, a request per metric."""
    tags = run.data.tags
    curves = tracking.read_curves_tag(tags.get(tracking.TAG_CURVES))
    if curves is None:
        curves = {
            key: client.metric_history(run.info.run_id, key)
            for key in tracking.CURVE_METRICS
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
        replicate=_int_or_none(tags.get(tracking.TAG_REPLICATE)),
        confirms=_int_or_none(tags.get(tracking.TAG_CONFIRMS)),
        track_scores=_track_scores(tags.get(tracking.TAG_TRACK_SCORES)),
        protocol=Protocol.from_tags(tags, tracking.TAG_PROTOCOL, tracking.TAG_PROTOCOL_SUMMARY),
        excerpt=Excerpt.from_tag(tags.get(tracking.TAG_LISTEN_EXCERPT)),
        loaded=tags.get(tracking.TAG_LOADED_MACHINE) == "true",
    )


def _track_scores(text: str | None) -> dict[str, dict[str, float]]:
    """The track scores tag's JSON; empty when absent or unreadable (then no interval over tracks)."""
    if not text:
        return {}
    try:
        scores = json.loads(text)
        return {str(t): {str(m): float(v) for m, v in s.items()} for t, s in scores.items()}
    except (ValueError, AttributeError, TypeError):
        return {}


def _natural(text: str) -> list[Any]:
    """Sort key in which 'open-unmix10' follows 'open-unmix9'."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def ordered(rows: Iterable[RunRow]) -> list[RunRow]:
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


def _study_runs(client: Client, study: str, experiment_ids: list[str]) -> tuple[Run | None, list[Run]]:
    """The study's parent run (the newest, should there be several) and its trial runs.

    Trials are the runs tagged with the study that are nested, plus any other run nested under the
    parent (so that a trial whose tags were not yet written still shows up).
    """
    tagged = client.search_runs(experiment_ids, tracking.tag_equals(tracking.TAG_STUDY, study))
    parents = sorted((r for r in tagged if _is_study_parent(r)), key=lambda r: r.info.start_time or 0)
    parent = parents[-1] if parents else None
    trials = {r.info.run_id: r for r in tagged if not _is_study_parent(r)}
    if parent is not None:
        nested = tracking.tag_equals(tracking.TAG_PARENT_RUN, parent.info.run_id)
        for run in client.search_runs([parent.info.experiment_id], nested):
            trials.setdefault(run.info.run_id, run)
    return parent, list(trials.values())


def load_study(study: str, experiment: str | None = None) -> Report:
    """The trials of the study named `study` (in `experiment`, or in any experiment)."""
    client = reading_client()
    parent, trials = _study_runs(client, study, _experiment_ids(client, experiment))
    if parent is None and not trials:
        scope = f"in experiment {experiment!r} " if experiment else ""
        raise ReportError(f"no study named {study!r} {scope}{where()}")
    if not trials:
        raise ReportError(f"study {study!r} has no trial runs yet")
    rows = ordered(run_row(client, run) for run in trials)
    parent_id = parent.info.run_id if parent else None
    experiment_id = (parent or trials[0]).info.experiment_id
    return Report(f"study {study}", rows, study=study, parent_run_id=parent_id, experiment_id=experiment_id)


def load_experiment(experiment: str) -> Report:
    """Every run of an experiment, except study parent runs (their trials are listed instead)."""
    client = reading_client()
    runs = [r for r in client.search_runs(_experiment_ids(client, experiment)) if not _is_study_parent(r)]
    if not runs:
        raise ReportError(f"experiment {experiment!r} has no runs")
    return Report(f"experiment {experiment}", ordered(run_row(client, run) for run in runs))


def load_runs(run_ids: Sequence[str]) -> Report:
    """The given runs, in report order."""
    client = reading_client()
    runs = [_run(client, run_id) for run_id in run_ids]
    return Report(f"{len(runs)} runs", ordered(run_row(client, run) for run in runs))


def load_children(parent_run_id: str) -> Report:
    """The runs nested under a (study) parent run, titled after its study."""
    client = reading_client()
    parent = _run(client, parent_run_id)
    study = parent.data.tags.get(tracking.TAG_STUDY)
    runs = client.search_runs(
        [parent.info.experiment_id], tracking.tag_equals(tracking.TAG_PARENT_RUN, parent_run_id)
    )
    title = f"study {study}" if study else (parent.info.run_name or parent_run_id)
    rows = ordered(run_row(client, run) for run in runs)
    return Report(title, rows, study=study, parent_run_id=parent_run_id)


def _run(client: Client, run_id: str) -> Run:
    run = client.find_run(run_id)
    if run is None:
        raise ReportError(f"no run with id {run_id!r} {where()}")
    return run


def config_runs(report: Report, name: str) -> list[RunRow]:
    """The runs of one config of a report: a grid entry's replicates (by replicate), or the run of
    that name or id; ReportError naming what there is when nothing matches."""
    entry = sorted((r for r in report.rows if r.grid_entry == name), key=lambda r: r.replicate or 0)
    if entry:
        return entry
    found = [r for r in report.rows if name in (r.run_id, r.name)]
    if len(found) == 1:
        return found
    names = sorted({r.grid_entry or r.name for r in report.rows})
    what = "several runs are" if found else "no grid entry or run is"
    raise ReportError(f"{what} named {name!r} in {report.title}; choose one of {', '.join(names)}")


def check_protocols(rows: Sequence[RunRow], allow_mixed: bool) -> str:
    """The evaluation protocol every row was scored by, as one line (for a report's header);
    ReportError naming the first difference unless allow_mixed (then it says they are mixed)."""
    recorded = {r.name: r.protocol for r in rows if r.protocol is not None}
    unrecorded = [r.name for r in rows if r.protocol is None]
    if allow_mixed:
        kinds = {p.fingerprint() for p in recorded.values()} | ({"none"} if unrecorded else set())
        if len(kinds) > 1:
            return f"mixed ({len(kinds)} protocols; --allow-mixed-protocols)"
    elif recorded and unrecorded:
        raise ReportError(
            f"run {unrecorded[0]!r} records no evaluation protocol and {next(iter(recorded))!r} does; "
            "--allow-mixed-protocols compares them anyway"
        )
    if not recorded:
        return "not recorded (runs scored before umx-tune recorded protocols)"
    protocol = check_same(recorded) if not allow_mixed else next(iter(recorded.values()))
    return f"{protocol.summary()} ({protocol.fingerprint()})"
