"""`umx-tune optimize` end to end: storage, study, worker loop, and the study's conclusion."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import optuna
from optuna.trial import FrozenTrial, TrialState

from umx_tune import cores
from umx_tune.errors import UmxTuneError
from umx_tune.paths import require_writable, require_writable_uri
from umx_tune.report.page import publish_study
from umx_tune.search import choices, confirm, mirror, storage, worker
from umx_tune.search.settings import Request
from umx_tune.search.setup import StudyContext, new_study, open_study
from umx_tune.search.trial import TrialOptions
from umx_tune.signals import interruption
from umx_tune.tracking.client import hide_run_links
from umx_tune.tracking.server import check_server, tracking_uri

T = TypeVar("T")


class StudyFailed(UmxTuneError):
    """Every trial this worker ran failed (a bug or an impossible base config, not a bad trial)."""

    exit_code = 1


@dataclass(frozen=True)
class RunOptions:
    """This worker's own options (not part of the study's settings)."""

    storage_url: str | None
    heartbeat_interval: int
    timeout: float | None
    sampler_seed: int | None
    pruner_startup_trials: int
    register_best: str | None
    checkpoint_root: Path
    progress: bool


@dataclass
class Outcome:
    ctx: StudyContext
    report: worker.WorkerReport
    best: FrozenTrial | None
    concluded: bool
    registered: str | None = None
    pareto_front: list[FrozenTrial] | None = None  # multi-objective studies only
    confirmed: list[confirm.Confirmed] | None = None  # --confirm-best: best mean over seeds first


def optimize(request: Request, options: RunOptions) -> Outcome:
    """Create or join the study, run trials until it is done, and conclude it if this worker is last.

    The worker counts among the processes that share the machine's cores from its start to its
    end (umx_tune/cores.py): counted only during its trials, a worker let another's trial that began
    meanwhile (the first one, while it set the study up) take every core, and the two then fought
    over them (a 2-worker grid took 0.9 of one worker's time).
    """
    with cores.registered():
        return _optimize(request, options)


def _optimize(request: Request, options: RunOptions) -> Outcome:
    # --timeout counts from the start of the command, as Optuna's counts from optimize()
    deadline = None if options.timeout is None else time.monotonic() + options.timeout
    check_server()  # fail fast, before any storage or study is made
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # umx-tune reports trials itself
    if not options.progress:
        hide_run_links()  # --quiet: the summary alone
    url = options.storage_url or storage.default_url(tracking_uri())
    require_writable_uri(url, "the Optuna storage")
    require_writable(options.checkpoint_root, "checkpoints")
    adopt = mirror.pop_project_run()
    if not storage.exists(url):  # refuse what would be refused before the storage is made
        new_study(request, storage.masked(url), adopt)
    heartbeat = storage.HeartbeatSettings.every(options.heartbeat_interval)
    raw = storage.open_storage(url, heartbeat, worker.on_stale_trial)
    ctx = open_study(request, raw, storage.masked(url), adopt)
    study = ctx.load(
        choices.make_sampler(ctx.settings.sampler, options.sampler_seed),
        choices.make_pruner(ctx.settings.pruner, _pruner_settings(ctx, options)),
    )
    trial_options = TrialOptions(options.checkpoint_root, options.progress, options.heartbeat_interval)
    try:
        report = _run_trials(ctx, study, trial_options, deadline, heartbeat)
    except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM: the last worker out ends the parent
        if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
            mirror.end_parent(ctx.parent_run_id, "KILLED", f"{interruption(stop)}; {waiting} trials queued")
        raise
    if report.stopped_by == "done":  # a worker of the study waiting for a core here need not start
        cores.finish_group()
    outcome = Outcome(ctx, report, best=None, concluded=False)
    if _through_faults(lambda: _should_conclude(ctx, study, report), heartbeat):
        _through_faults(lambda: conclude(outcome, study, options.register_best), heartbeat)
    _check_not_all_failed(report)
    return outcome


def _through_faults(action: Callable[[], T], heartbeat: storage.HeartbeatSettings) -> T:
    """action(), run again a heartbeat interval later where the Optuna storage's database dropped
    the connection under it (STORAGE_FAULT_TRIES times at most): a worker's checks and repairs
    after its loop read and write the storage as its loop does."""
    for _ in range(worker.STORAGE_FAULT_TRIES - 1):
        try:
            return action()
        except worker.STORAGE_FAULTS:
            time.sleep(heartbeat.interval)
    return action()


def _run_trials(
    ctx: StudyContext,
    study: optuna.Study,
    options: TrialOptions,
    deadline: float | None,
    heartbeat: storage.HeartbeatSettings,
) -> worker.WorkerReport:
    """Queued trials until none is left, what the last worker's repair queues again, then (for the
    last worker) the confirmations of --confirm-best."""
    report = worker.run_worker(ctx, study, options, deadline, poll=heartbeat.interval)
    while report.stopped_by == "done" and _through_faults(
        lambda: _should_conclude(ctx, study, report) and _heal(ctx, heartbeat), heartbeat
    ):
        _more(report, worker.run_worker(ctx, study, options, deadline, poll=heartbeat.interval))
    if report.stopped_by == "done" and _through_faults(
        lambda: _should_conclude(ctx, study, report), heartbeat
    ):
        _confirm(ctx, study, report, options, deadline, heartbeat.interval)
    return report


def _confirm(
    ctx: StudyContext,
    study: optuna.Study,
    report: worker.WorkerReport,
    options: TrialOptions,
    deadline: float | None,
    poll: float,
) -> None:
    """--confirm-best: the search is over; queue its best configs' other seeds and run them."""
    if not confirm.pending(ctx.settings, study):
        return
    numbers = confirm.enqueue(ctx.settings, study, ctx.objective)
    seeds = ctx.settings.replicates
    if options.progress:
        print(f"{ctx.settings.name}: confirming trials {numbers} with {seeds} seeds each", file=sys.stderr)
    _more(report, worker.run_worker(ctx, study, options, deadline, poll=poll))


def _more(report: worker.WorkerReport, more: worker.WorkerReport) -> None:
    """What a further run of the worker loop ran, added to the worker's report."""
    report.ran.update(more.ran)
    report.stopped_by = more.stopped_by


def _heal(ctx: StudyContext, heartbeat: storage.HeartbeatSettings) -> bool:
    """Before the last worker concludes the study: what faults left behind is repaired as `optimize
    --repair` repairs it (an entry lost between a dead worker's FAIL and its requeue is queued again,
    a run that missed a write is mirrored again, an orphan run is ended). True when trials were
    queued: the worker runs them before it concludes."""
    from umx_tune.search import audit  # it concludes studies through this module

    queued = []

    def repaired(finding: audit.Finding) -> None:
        print(f"{ctx.settings.name}: repaired {finding.kind}: {finding.message}", file=sys.stderr)
        if finding.kind in (audit.LOST, audit.STALE_TRIAL):
            queued.append(finding)

    audit.Audit(ctx, heartbeat.grace, settled=True).repair(repaired, summary=False)
    return bool(queued)


def _pruner_settings(ctx: StudyContext, options: RunOptions) -> choices.PrunerSettings:
    epochs_dist = ctx.settings.plan.distributions().get("epochs")
    max_epochs = ctx.settings.base.epochs
    if epochs_dist is not None:  # a grid or space that sets epochs: the largest it can take
        high = getattr(epochs_dist, "high", None)
        max_epochs = int(high if high is not None else max(epochs_dist.choices))  # type: ignore[attr-defined]
    return choices.PrunerSettings(startup_trials=options.pruner_startup_trials, max_epochs=max_epochs)


def _should_conclude(ctx: StudyContext, study: optuna.Study, report: worker.WorkerReport) -> bool:
    """Only the worker that finished the study's last trial writes the summary (or, when nothing
    was left to run, a worker that finds the summary missing), so that it is written once."""
    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.RUNNING for t in trials):
        return False
    finished = [t for t in trials if t.state.is_finished() and t.datetime_complete is not None]
    if not report.ran:
        return not mirror.is_finished(ctx.parent_run_id)
    last = max(finished, key=lambda t: t.datetime_complete)  # type: ignore[arg-type,return-value]
    return last.number in report.ran


def conclude(outcome: Outcome, study: optuna.Study, register_best: str | None) -> None:
    """Write the study's summary on its parent run and end it: the last worker does, and the audit's
    --repair again."""
    ctx = outcome.ctx
    waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    state = "complete" if not waiting else f"stopped with {waiting} trials queued"
    note = _describe(ctx)
    outcome.best = mirror.finalize(ctx.parent_run_id, study, ctx.objective, state, note)
    if ctx.settings.confirm_best:
        outcome.confirmed = confirm.confirmed(study, ctx.objective)
        if outcome.confirmed:  # the best is the best mean over seeds, not the luckiest seed
            outcome.best = outcome.confirmed[0].trial
            mirror.record_confirmed(ctx.parent_run_id, outcome.confirmed)
    if ctx.objective.multi:
        outcome.pareto_front = mirror.record_pareto_front(ctx.parent_run_id, study)
    outcome.concluded = True
    if register_best and outcome.best is not None:
        outcome.registered = mirror.register_best(ctx.parent_run_id, outcome.best, register_best)
    mirror.end_parent(ctx.parent_run_id, "FINISHED")


def _describe(ctx: StudyContext) -> str | None:
    """The parent run's page (report/index.html: tables, plots, players for the best and the worst
    config), logged; returns the results tables as the parent's description (the MLflow UI shows it
    on the run's page), which goes out with the study's summary.

    The study is concluded without them if MLflow refuses (None; a warning says how to write them
    later): trials, best trial and registered model are recorded anyway, and the parent must end.
    """
    try:
        return publish_study(ctx.parent_run_id)
    except UmxTuneError as err:  # TrackingError: MLflow refused or did not answer
        print(
            f"umx-tune: warning: the study's description and page were not written ({err}); "
            f"`umx-tune report --study '{ctx.settings.name}'` writes them",
            file=sys.stderr,
        )
        return None


def _check_not_all_failed(report: worker.WorkerReport) -> None:
    states = list(report.ran.values())
    if states and all(s == TrialState.FAIL.name for s in states):
        raise StudyFailed(
            f"all {len(states)} trials this worker ran failed; see their runs' umx_tune.error tag"
        )


def print_outcome(outcome: Outcome) -> None:
    """What this worker did, on stdout."""
    ctx = outcome.ctx
    ran = ", ".join(f"{n}:{s}" for n, s in sorted(outcome.report.ran.items())) or "none"
    plan = ctx.settings.plan
    label = plan.name if plan.name.startswith(f"{plan.mode} ") else f"{plan.mode} {plan.name}"
    lines = [
        f"study {ctx.settings.name} ({label}, objective {ctx.objective.name}); storage {ctx.storage_url}",
        f"  this worker ran trials: {ran} (stopped: {outcome.report.stopped_by})",
        f"  parent run: {ctx.parent_run_id}",
    ]
    if outcome.best is not None:
        lines.append(
            f"  best trial {outcome.best.number}: {ctx.objective.name} {outcome.best.values}, "
            f"params {outcome.best.params}, run {outcome.best.user_attrs.get(mirror.RUN_ID_ATTR)}"
        )
    if outcome.pareto_front is not None:
        names = ", ".join(ctx.objective.metric_names)
        lines.append(f"  Pareto front ({names}): {len(outcome.pareto_front)} trials")
        lines.extend(
            f"    trial {t.number}: {t.values}, params {t.params}, run {t.user_attrs.get(mirror.RUN_ID_ATTR)}"
            for t in outcome.pareto_front
        )
    if outcome.confirmed:
        lines.append(
            f"  confirmed with {ctx.settings.replicates} seeds ({ctx.objective.name}, mean [95% CI]):"
        )
        lines.extend(
            f"    trial {c.trial.number}: {c.value:.4g}, trials {list(c.numbers)}" for c in outcome.confirmed
        )
    if outcome.registered:
        lines.append(f"  registered model: {outcome.registered}")
    print("\n".join(lines))
    sys.stdout.flush()
