"""The study audit, `umx-tune optimize --check / --repair`: do Optuna and MLflow tell one story?

Optuna's storage is the record of truth (claims, states, values); MLflow mirrors it (mirror.py).
The audit reads one study from both and lists every disagreement: a finished trial without exactly
one run of the same state, params and values; a trial run that mirrors no trial; a trial RUNNING
without a live heartbeat; a grid entry (or replicate) complete twice, or lost to a tracking error
and never queued again; a parent run whose summary (state, best trial, counts, description) is not
the study's. `--repair` makes MLflow agree through the mirror's own writers, fails dead workers'
trials as a worker does, queues lost entries again and rewrites the summary.

Safe while workers run: runs are read before trials (a run is made only after its trial is
claimed, so a run never looks orphaned for being new), a trial whose worker is alive is left to
it, and a trial that finished within the heartbeat grace period while its run still says RUNNING
is its worker writing the mirror at that moment.
"""

from __future__ import annotations

import datetime
import json
import math
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from umx_tune import tracking
from umx_tune.config import TrainConfig
from umx_tune.errors import ConfigError, TrackingError
from umx_tune.report.note import study_note
from umx_tune.report.runs import load_children
from umx_tune.search import confirm, driver, mirror, objectives, storage, worker
from umx_tune.search.plans import GRID_ENTRY_ATTR, Grid
from umx_tune.search.progress import named
from umx_tune.search.settings import REPLICATE_ATTR, StudySettings
from umx_tune.search.setup import PARENT_RUN_ATTR, READY_ATTR, SETTINGS_ATTR, StudyContext
from umx_tune.search.trial import run_name
from umx_tune.tracking.client import Client, Run
from umx_tune.tracking.server import check_server, tracking_uri

# kinds of disagreement (the chaos benchmark counts them by kind)
STALE_TRIAL = "stale-trial"  # RUNNING in Optuna, its worker silent for longer than the grace period
MISSING_RUN = "missing-run"  # a finished trial without a run
STALE_RUN = "stale-run"  # a run that says otherwise than its trial
ORPHAN_RUN = "orphan-run"  # a trial run that mirrors no trial
DUPLICATE = "duplicate"  # a grid entry (replicate) or search trial done more than once
LOST = "lost"  # a grid entry (replicate) or search trial lost to faults, neither done nor queued
SUMMARY = "summary"  # the parent run's summary is not the study's
PASSES = 3  # a repair can reveal another (a re-mirrored run changes the description)
_TRACKING_ERRORS = {TrackingError.__name__, *(cls.__name__ for cls in TrackingError.__subclasses__())}


@dataclass(frozen=True)
class Finding:
    kind: str
    message: str
    repair: Callable[[], None] | None = None  # None: Optuna itself holds it; MLflow cannot fix it


@dataclass
class Snapshot:
    """One reading of the study: runs first, then trials and heartbeats."""

    study: optuna.Study
    trials: list[FrozenTrial]
    runs: dict[int | None, list[Run]]  # trial number tag -> the parent's child runs carrying it
    parent: Run | None  # None where MLflow has none, or where it was not read (no summary audited)
    experiment_id: str
    beat_ages: dict[int, float] | None  # trial id -> seconds since its last heartbeat (None: no beats)


class Audit:
    """One study, audited with the grace period its workers use."""

    def __init__(self, ctx: StudyContext, grace: float, settled: bool = False) -> None:
        """settled: no other worker is writing (the study's last worker, no trial RUNNING), so a
        trial that has just finished is audited at once instead of after the grace period."""
        self.ctx = ctx
        self.grace = grace
        self.settled = settled

    def check(self, summary: bool = True) -> list[Finding]:
        """Every disagreement, in the order a repair fixes them (the summary last; summary=False: all
        but the summary, which the worker concluding the study is about to write)."""
        snap = self._snapshot(parent=summary)
        findings = [f for trial in snap.trials for f in self._trial(snap, trial)]
        numbers = {trial.number for trial in snap.trials}
        strays = [run for number, runs in snap.runs.items() if number not in numbers for run in runs]
        findings += self._orphans(strays, "it mirrors no trial of the study")
        findings += self._plan(snap)
        if summary:
            findings += self._summary(snap)
        return findings

    def repair(self, done: Callable[[Finding], None], summary: bool = True) -> list[Finding]:
        """Repair what can be (done(finding) after each); returns what still disagrees."""
        found = self.check(summary)
        for _ in range(PASSES):
            fixable = [(finding, finding.repair) for finding in found if finding.repair is not None]
            if not fixable:
                break
            for finding, fix in fixable:
                fix()
                done(finding)
            found = self.check(summary)
        return found

    # reading
    def _snapshot(self, parent: bool) -> Snapshot:
        """The study read once; its parent run too where parent is True (the summary is audited)."""
        client = Client()
        settings = self.ctx.settings
        experiment_id = client.known_experiment_id(settings.experiment)
        if experiment_id is None:
            raise ConfigError(f"study {settings.name!r}: MLflow has no experiment {settings.experiment!r}")
        parent_filter = tracking.tag_equals(tracking.TAG_PARENT_RUN, self.ctx.parent_run_id)
        runs: dict[int | None, list[Run]] = defaultdict(list)
        for run in client.search_runs([experiment_id], parent_filter):
            runs[_number(run)].append(run)
        parent_run = client.find_run(self.ctx.parent_run_id) if parent else None
        study = self.ctx.load(optuna.samplers.RandomSampler(), optuna.pruners.NopPruner())
        trials = study.get_trials(deepcopy=False)
        ages = _beat_ages(self.ctx.storage, self.ctx.study_id)
        return Snapshot(study, trials, runs, parent_run, experiment_id, ages)

    def _alive(self, snap: Snapshot, trial: FrozenTrial) -> bool:
        """Whether the trial's worker beat within the grace period (its claim counts as a beat)."""
        if snap.beat_ages is None:
            return True  # a storage without heartbeats (the gRPC proxy): no way to tell
        age = snap.beat_ages.get(trial._trial_id)
        if age is None and trial.datetime_start is not None:
            age = (datetime.datetime.now() - trial.datetime_start).total_seconds()
        return age is None or age <= self.grace

    def _recent(self, trial: FrozenTrial) -> bool:
        """Finished within the grace period: its worker may still be writing what follows."""
        end = trial.datetime_complete
        if self.settled or end is None:
            return False
        return (datetime.datetime.now() - end).total_seconds() <= self.grace

    # trials and their runs
    def _trial(self, snap: Snapshot, trial: FrozenTrial) -> Iterator[Finding]:
        runs = snap.runs.get(trial.number, [])
        linked = trial.user_attrs.get(mirror.RUN_ID_ATTR)
        if trial.state == TrialState.RUNNING:
            if not self._alive(snap, trial):
                fail = partial(self._fail_stale, snap.study, trial)
                yield Finding(STALE_TRIAL, f"{named(trial)}: RUNNING without a live heartbeat", fail)
            elif linked:  # its worker's run is known: any other is a leftover
                kept = next((r for r in runs if r.info.run_id == linked), None)
                others = [r for r in runs if r.info.run_id != linked]
                yield from self._orphans(others, "another run is its", kept)
            return
        if trial.state == TrialState.WAITING:
            yield from self._orphans(runs, "its trial has not started")
            return
        main = next((r for r in runs if r.info.run_id == linked), None)
        if main is None and not linked and runs:
            main = max(runs, key=lambda r: r.info.start_time or 0)
        yield from self._orphans([r for r in runs if r is not main], f"{named(trial)} has another run", main)
        if main is None:
            what = f"run {linked} is gone" if linked else "it never got one"
            restore = partial(self._restore, snap, trial)
            text = f"{named(trial)}: {trial.state.name} in Optuna, no run ({what})"
            yield Finding(MISSING_RUN, text, restore)
            return
        differences = _differences(main, trial)
        settling = main.data.tags.get(tracking.TAG_TRIAL_STATE) == TrialState.RUNNING.name
        if differences and not (settling and self._recent(trial)):
            fix = partial(mirror.mirror_finished, main.info.run_id, trial, _reason(trial))
            text = "; ".join(differences)
            yield Finding(STALE_RUN, f"{named(trial)}: run {main.info.run_id} says {text}", fix)

    def _orphans(self, runs: list[Run], why: str, kept: Run | None = None) -> Iterator[Finding]:
        """Runs that mirror no trial, ended FAILED as orphans; one that carries kept's create token
        is a second answer to kept's one runs/create (MLflow's HTTP client sends a create again when
        the first answer is cut), which no process ever wrote to: it is deleted, even while its
        creation's heartbeat is fresh."""
        token = kept.data.tags.get(tracking.TAG_CREATE_TOKEN) if kept else None
        kept_id = kept.info.run_id if kept else ""
        for run in runs:
            what = f"run {run.info.run_id} ({run.info.run_name}, {run.info.status})"
            if token is not None and run.data.tags.get(tracking.TAG_CREATE_TOKEN) == token:
                text = f"{what}: made by a repeat of run {kept_id}'s creation (its create token)"
                yield Finding(ORPHAN_RUN, text, partial(mirror.delete_duplicate, run.info.run_id))
                continue
            seen = tracking.TAG_ORPHAN in run.data.tags and run.info.status != tracking.STATUS_RUNNING
            if seen or _run_alive(run):  # a live heartbeat: some process is still writing to it
                continue
            yield Finding(ORPHAN_RUN, f"{what}: {why}", partial(mirror.end_orphan, run.info.run_id, why))

    def _fail_stale(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """As a worker fails a dead worker's trial: FAIL in Optuna, its run FAILED, queued again."""
        try:
            failed = self.ctx.storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        except UpdateFinishedTrialError:
            return  # its worker or another one finished it meanwhile
        if failed:
            worker.on_stale_trial(study, self.ctx.storage.get_trial(trial._trial_id))

    def _restore(self, snap: Snapshot, trial: FrozenTrial) -> None:
        settings = self.ctx.settings
        tags = mirror.trial_tags(settings, trial, trial.user_attrs.get(GRID_ENTRY_ATTR))
        run_id = mirror.restore_trial_run(
            snap.experiment_id,
            self.ctx.parent_run_id,
            trial.user_attrs.get(mirror.RUN_ID_ATTR),
            run_name(self.ctx, trial),  # type: ignore[arg-type]  # a FrozenTrial has all it reads
            tags,
            _config(settings, trial).to_params(),
        )
        mirror.mirror_finished(run_id, trial, _reason(trial))

    # the plan: every grid entry (replicate) or search trial done once
    def _plan(self, snap: Snapshot) -> Iterator[Finding]:
        groups: dict[tuple[str, int], list[FrozenTrial]] = defaultdict(list)
        for trial in snap.trials:
            groups[trial_key(trial)].append(trial)
        plan = self.ctx.settings.plan
        if isinstance(plan, Grid):
            for replicate in range(self.ctx.settings.replicates):
                for entry in plan.entries:
                    if (entry.name, replicate) not in groups:
                        yield Finding(LOST, f"grid entry {entry.name} replicate {replicate}: no trial at all")
        for trials in groups.values():
            done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
            last = max(trials, key=lambda t: t.number)
            if len(done) > 1:
                numbers = ", ".join(str(t.number) for t in done)
                yield Finding(DUPLICATE, f"{named(last)}: done {len(done)} times (trials {numbers})")
            if done or any(not t.state.is_finished() for t in trials) or self._recent(last):
                continue
            reason = _reason(last)
            if not _lost_to_faults(reason):
                continue  # its config failed: the study recorded that faithfully
            why = "its worker died" if reason is None else reason[:120]
            lost = f"{named(last)}: lost ({why}), never queued again"
            retries = int(last.user_attrs.get(worker.RETRIES_ATTR, 0))
            if retries >= worker.MAX_RETRIES:
                yield Finding(LOST, f"{lost}; given up after {retries} retries")
            else:
                yield Finding(LOST, lost, partial(worker.requeue, snap.study, last))

    # the parent's summary
    def _summary(self, snap: Snapshot) -> Iterator[Finding]:
        parent = snap.parent
        if parent is None:
            yield Finding(SUMMARY, f"the study's parent run {self.ctx.parent_run_id} is not in MLflow")
            return
        states = [t.state for t in snap.trials]
        if TrialState.RUNNING in states:
            return  # the summary is written when the last trial ends
        last = max(snap.trials, key=lambda t: t.datetime_complete or datetime.datetime.min, default=None)
        differences = self._summary_differences(snap, parent)
        # a worker that has just ended the last trial is writing the summary
        writing = parent.info.status == tracking.STATUS_RUNNING and last is not None and self._recent(last)
        if differences and not writing:
            text = "; ".join(differences)
            yield Finding(SUMMARY, f"parent run {parent.info.run_id}: {text}", self._conclude)

    def _summary_differences(self, snap: Snapshot, parent: Run) -> list[str]:
        tags, metrics = parent.data.tags, parent.data.metrics
        out = []
        if parent.info.lifecycle_stage == tracking.LIFECYCLE_DELETED:
            out.append("deleted")
        if parent.info.status == tracking.STATUS_RUNNING:
            out.append("RUNNING while no trial runs")
        waiting = sum(t.state == TrialState.WAITING for t in snap.trials)
        state = "complete" if not waiting else f"stopped with {waiting} trials queued"  # as driver words it
        if tags.get(tracking.TAG_STUDY_STATE) != state:
            out.append(f"study state {tags.get(tracking.TAG_STUDY_STATE)!r} (Optuna: {state!r})")
        for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
            count, name = sum(t.state == s for t in snap.trials), tracking.trial_count_name(s.name)
            if metrics.get(name) != count:
                out.append(f"{name} {metrics.get(name)} (Optuna: {count})")
        best = mirror.best_trial(snap.study, self.ctx.objective)
        if best is not None and tags.get(tracking.TAG_BEST_TRIAL) != str(best.number):
            out.append(f"best trial {tags.get(tracking.TAG_BEST_TRIAL)} (Optuna: {best.number})")
        if best is not None and not _same(metrics.get(tracking.BEST_VALUE), best.values[0]):
            out.append(f"{tracking.BEST_VALUE} {metrics.get(tracking.BEST_VALUE)} (Optuna: {best.values[0]})")
        if self.ctx.settings.confirm_best:
            confirmed = confirm.confirmed(snap.study, self.ctx.objective)
            want = str(confirmed[0].trial.number) if confirmed else None
            if tags.get(tracking.TAG_CONFIRMED_BEST) != want:
                out.append(f"confirmed best {tags.get(tracking.TAG_CONFIRMED_BEST)} (Optuna: {want})")
        if _first_line(tags.get(tracking.TAG_NOTE)) != self._described(parent):
            out.append("description out of date")
        return out

    def _described(self, parent: Run) -> str:
        """The first line of the description the study's runs give now (its summary line)."""
        report = load_children(parent.info.run_id)
        return _first_line(study_note(report))

    def _conclude(self) -> None:
        """The summary written again as the worker that ends a study writes it (no model registered)."""
        client = Client()
        parent = client.find_run(self.ctx.parent_run_id)
        if parent is not None and parent.info.lifecycle_stage == tracking.LIFECYCLE_DELETED:
            client.restore_run(self.ctx.parent_run_id)
        study = self.ctx.load(optuna.samplers.RandomSampler(), optuna.pruners.NopPruner())
        outcome = driver.Outcome(self.ctx, worker.WorkerReport(), best=None, concluded=False)
        driver.conclude(outcome, study, register_best=None)


def open_audit(study_name: str, storage_url: str | None, heartbeat_interval: int, repair: bool) -> Audit:
    """The study of that name in the storage (derived from the tracking URI as optimize derives it)."""
    check_server()
    url = storage_url or storage.default_url(tracking_uri(), warn=False)
    heartbeat = storage.HeartbeatSettings.every(heartbeat_interval)
    raw = storage.open_reader(url)  # a missing sqlite file is an error, not a new empty storage
    if repair:  # requeues need the workers' storage (sqlite: serialized claims and trial numbers)
        raw = storage.open_storage(url, heartbeat, worker.on_stale_trial)
    try:
        study_id = raw.get_study_id_from_name(study_name)
    except KeyError:
        raise ConfigError(f"no study {study_name!r} in Optuna storage {storage.masked(url)}") from None
    attrs = raw.get_study_user_attrs(study_id)
    if not attrs.get(READY_ATTR):
        raise ConfigError(f"study {study_name!r} was not made by umx-tune, or never fully set up")
    settings = StudySettings.from_json(attrs[SETTINGS_ATTR])
    objective = objectives.get(settings.objective)
    ctx = StudyContext(settings, objective, raw, storage.masked(url), study_id, attrs[PARENT_RUN_ATTR], False)
    return Audit(ctx, heartbeat.grace)


def run(audit: Audit, repair: bool) -> int:
    """Print every disagreement (and, with repair, every repair) on stdout; 1 if any is left."""
    name = audit.ctx.settings.name

    def repaired(finding: Finding) -> None:
        print(f"repaired {finding.kind}: {finding.message}")

    left = audit.repair(repaired) if repair else audit.check()
    for finding in left:
        fixable = " (--repair fixes it)" if finding.repair and not repair else ""
        print(f"{finding.kind}: {finding.message}{fixable}")
    if left:
        print(f"study {name}: {len(left)} disagreements between Optuna and MLflow")
    else:
        print(f"study {name}: Optuna and MLflow agree")
    sys.stdout.flush()
    return 1 if left else 0


def _number(run: Run) -> int | None:
    try:
        return int(run.data.tags.get(tracking.TAG_TRIAL_NUMBER, ""))
    except ValueError:
        return None


def trial_key(trial: FrozenTrial) -> tuple[str, int]:
    """What a trial runs: its grid entry and replicate, a confirmation's trial and seed, or (a search
    trial) the trial it retries, so that a retry and the trial it retries count as one."""
    entry = trial.user_attrs.get(GRID_ENTRY_ATTR)
    replicate = int(trial.user_attrs.get(REPLICATE_ATTR, 0))
    if entry is not None:
        return str(entry), replicate
    confirms = trial.user_attrs.get(confirm.CONFIRMS_ATTR)
    if confirms is not None:
        return f"confirms {confirms}", replicate
    return "trial", int(trial.user_attrs.get(mirror.RETRY_OF_ATTR, trial.number))


def _lost_to_faults(reason: str | None) -> bool:
    """Whether a trial failed for what happened around it, not for its config: a worker that died
    (the stale check fails a trial without a reason), a tracking or storage error, Ctrl-C or SIGTERM."""
    if reason is None:
        return True
    kind = reason.split(":")[0]
    storage_faults = {fault.__name__ for fault in worker.STORAGE_FAULTS}
    return kind in _TRACKING_ERRORS | storage_faults or reason.startswith(("interrupted", "terminated"))


def _reason(trial: FrozenTrial) -> str | None:
    reason = trial.user_attrs.get(worker.REASON_ATTR)
    return None if reason is None else str(reason)


def _config(settings: StudySettings, trial: FrozenTrial) -> TrainConfig:
    """The trial's config as trial.run_trial made it (the entry's or sampled values, seed + replicate)."""
    values = trial.params or trial.system_attrs.get("fixed_params", {})
    config = settings.base.replace(**values)
    return config.replace(seed=config.seed + int(trial.user_attrs.get(REPLICATE_ATTR, 0)))


def _differences(run: Run, trial: FrozenTrial) -> list[str]:
    """How a finished trial's run says otherwise than the trial (empty: it agrees)."""
    tags, out = run.data.tags, []
    if tags.get(tracking.TAG_TRIAL_STATE) != trial.state.name:
        out.append(f"state {tags.get(tracking.TAG_TRIAL_STATE)} (Optuna: {trial.state.name})")
    statuses = {mirror.RUN_STATUS[trial.state]}
    if trial.state == TrialState.FAIL:
        statuses.add(tracking.STATUS_KILLED)  # interrupted by Ctrl-C
    if run.info.status not in statuses:
        out.append(f"status {run.info.status} (Optuna: {mirror.RUN_STATUS[trial.state]})")
    if _json(tags.get(tracking.TAG_TRIAL_PARAMS)) != trial.params:
        out.append(f"params {tags.get(tracking.TAG_TRIAL_PARAMS)} (Optuna: {trial.params})")
    for index, value in enumerate(trial.values or ()):
        name = tracking.trial_value_name(index)
        if math.isfinite(value) and not _same(run.data.metrics.get(name), value):
            out.append(f"{name} {run.data.metrics.get(name)} (Optuna: {value})")
    return out


def _run_alive(run: Run) -> bool:
    """Whether the run's own heartbeat tag (tracking.runs) is younger than its grace period."""
    tags = run.data.tags
    try:
        age = time.time() - float(tags[tracking.TAG_HEARTBEAT])
        return run.info.status == tracking.STATUS_RUNNING and age <= float(tags[tracking.TAG_HEARTBEAT_GRACE])
    except (KeyError, ValueError):
        return False


def _beat_ages(raw: optuna.storages.BaseStorage, study_id: int) -> dict[int, float] | None:
    """Seconds since each trial's last heartbeat, by trial id, on the database's clock.

    Read from Optuna's tables because its own stale check (fail_stale_trials) skips a trial that
    never beat: a worker killed between its claim and its first beat would stay RUNNING forever.
    """
    if not isinstance(raw, RDBStorage):
        return None
    import sqlalchemy
    from optuna.storages._rdb import models

    beat = models.TrialHeartbeatModel
    session = raw.scoped_session()
    try:
        now = session.execute(sqlalchemy.func.now()).scalar()
        rows = (
            session.query(beat.trial_id, beat.heartbeat)
            .join(models.TrialModel, models.TrialModel.trial_id == beat.trial_id)
            .filter(models.TrialModel.study_id == study_id)
            .all()
        )
    finally:
        session.close()
    assert now is not None
    now = now.replace(tzinfo=None)  # PostgreSQL's now() is timezone-aware, its stored beats are not
    return {trial_id: (now - at).total_seconds() for trial_id, at in rows}


def _same(logged: float | None, value: float) -> bool:
    return logged is not None and math.isclose(logged, value, rel_tol=1e-9, abs_tol=1e-12)


def _json(text: str | None) -> object:
    try:
        return None if text is None else json.loads(text)
    except ValueError:
        return None


def _first_line(text: str | None) -> str:
    return (text or "").strip().split("\n", 1)[0]
