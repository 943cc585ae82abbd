"""The worker loop: claim a queued trial, run it with a heartbeat, tell Optuna, mirror to MLflow.

A worker only ever claims WAITING trials (grid entries, search tickets, retries of lost trials):
the claim is Optuna's compare-and-swap WAITING -> RUNNING, so no two workers run the same trial and
a grid worker never invents a trial the grid does not hold. While nothing is queued but trials of
other workers are RUNNING, a worker waits and keeps checking their heartbeats, so that a dead
worker's trial is failed, its MLflow run marked FAILED and the trial queued again.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

import optuna
from optuna.exceptions import ExperimentalWarning, StorageInternalError, UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.exc import OperationalError

from umx_tune import cores
from umx_tune.errors import TrackingUnreachable, UmxTuneError, first_line
from umx_tune.search import mirror, progress
from umx_tune.search.confirm import CONFIRMS_ATTR
from umx_tune.search.plans import GRID_ENTRY_ATTR
from umx_tune.search.settings import REPLICATE_ATTR
from umx_tune.search.setup import StudyContext
from umx_tune.search.trial import Pruned, TrialOptions, run_trial
from umx_tune.signals import interruption

REASON_ATTR = "fail_reason"
PRUNED_EPOCH_ATTR = "pruned_epoch"
RETRIES_ATTR = "retries"
MAX_RETRIES = 3  # a trial that kills its worker again and again is given up after this many
# the Optuna storage's database went away under a trial (restarted, connections terminated): the
# trial is queued again (its retries unspent) and the worker goes on once the database answers
STORAGE_FAULTS = (StorageInternalError, OperationalError)
STORAGE_FAULT_TRIES = 10  # storage failures in a row (a poll interval apart) before a worker gives up
# seconds between looks at the study of a worker with nothing to claim while others' trials run: it
# exits as soon as they end (or runs one queued again), not a heartbeat interval later
IDLE_POLL = 2.0


@dataclass
class WorkerReport:
    ran: dict[int, str] = field(default_factory=dict)  # trial number -> final state
    stopped_by: str = "done"  # done / timeout / interrupted


def run_worker(
    ctx: StudyContext, study: optuna.Study, options: TrialOptions, deadline: float | None, poll: float
) -> WorkerReport:
    """Run queued trials until none is left (and none runs elsewhere), or until the deadline
    (a time.monotonic() value) has passed."""
    report = WorkerReport()
    faults = 0
    while True:
        if deadline is not None and time.monotonic() >= deadline:
            report.stopped_by = "timeout"
            return report
        try:
            if _next_trial(ctx, study, options, report, poll, deadline):
                return report
            faults = 0
        except STORAGE_FAULTS as lost:
            # a trial it held stays RUNNING without a heartbeat: the stale check queues it again
            faults += 1
            if faults > STORAGE_FAULT_TRIES:
                raise
            print(
                f"{ctx.settings.name}: the Optuna storage failed ({first_line(lost)}); again", file=sys.stderr
            )
            time.sleep(poll)


def _next_trial(
    ctx: StudyContext,
    study: optuna.Study,
    options: TrialOptions,
    report: WorkerReport,
    poll: float,
    deadline: float | None,
) -> bool:
    """Claim and run the next queued trial (or wait for one); True when the study has none left.

    The trial's cores are taken before the claim (umx_tune/cores.py): a worker waiting for a free
    core holds no trial that another worker could run, and one past its deadline claims none. A
    worker that keeps its cores (`optimize`) resizes them to the share first, or gives them up for a
    moment to another run that waits for one."""
    fail_stale_trials(study)
    on_wait = partial(cores.print_waiting, study=ctx.settings.name) if options.progress else None

    def past_deadline() -> bool:
        return deadline is not None and time.monotonic() >= deadline

    holding = cores.rebalance(on_wait, past_deadline)  # False: its study's other workers ended it
    if past_deadline():
        return False  # the loop stops it
    if holding:
        with cores.reserved(ctx.settings.base.threads, on_wait):
            if past_deadline():
                return False
            trial = claim(ctx, study)
            if trial is not None:
                try:
                    report.ran[trial.number] = run_claimed(ctx, study, trial, options)
                except KeyboardInterrupt:
                    report.ran[trial.number] = TrialState.FAIL.name
                    report.stopped_by = "interrupted"
                    raise
                return False
    if ctx.settings.budget is None:  # open-ended search: queue one more ticket
        study.enqueue_trial({})
        return False
    if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        return True
    time.sleep(min(poll, IDLE_POLL))  # a trial failed elsewhere is queued again: run it soon
    return False


def claim(ctx: StudyContext, study: optuna.Study) -> optuna.Trial | None:
    """Atomically take the first WAITING trial (None if there is none)."""
    # listed through the study, so that Optuna's trial cache knows the trial we then claim
    for waiting in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        # a beat before the claim: a claim whose answer a storage fault lost leaves the trial RUNNING
        # with no worker, and Optuna's stale check passes over a trial that never beat
        _beat(ctx.storage, waiting._trial_id)
        try:
            if ctx.storage.set_trial_state_values(waiting._trial_id, state=TrialState.RUNNING):
                return optuna.Trial(study, waiting._trial_id)
        except UpdateFinishedTrialError:
            continue  # finished (e.g. failed as stale) between the listing and the claim
    return None


def run_claimed(ctx: StudyContext, study: optuna.Study, trial: optuna.Trial, options: TrialOptions) -> str:
    """Run a claimed trial under a heartbeat; tell Optuna its outcome; mirror it. Returns the state.

    With options.progress, a line when it starts, and when it ends the trial's line and the
    study's (search/progress.py).
    """
    if options.progress:
        print(f"{ctx.settings.name}: {progress.named(trial)} starts", file=sys.stderr)
    reason: str | None = None
    attrs: dict[str, object] = {}
    try:
        with heartbeat(ctx.storage, trial._trial_id):
            values = run_trial(ctx, trial, options)
        state, told = TrialState.COMPLETE, list(values)
    except Pruned as pruned:
        state, told, reason = TrialState.PRUNED, None, str(pruned)
        attrs[PRUNED_EPOCH_ATTR] = pruned.epoch
    except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM: queued again for a resume
        reason = interruption(stop)
        interrupted = _give_back(study, trial, reason, counted=True)
        if interrupted is not None:
            _mirror_end(interrupted, reason)
        raise
    except TrackingUnreachable as lost:
        _give_back(study, trial, f"{type(lost).__name__}: {first_line(lost)}", counted=False)
        raise TrackingUnreachable(
            f"{lost} ({progress.named(trial)} is queued again; the same command resumes the study)"
        ) from None
    except STORAGE_FAULTS as lost:  # the storage dropped the connection mid-trial: not the trial's fault
        reason = f"{type(lost).__name__}: {first_line(lost)}"
        interrupted = _give_back(study, trial, reason, counted=False)
        if interrupted is not None:
            _mirror_end(interrupted, reason)
        print(f"{ctx.settings.name}: {progress.named(trial)} queued again: {reason}", file=sys.stderr)
        return TrialState.FAIL.name
    except Exception as err:  # the trial failed; the study goes on
        state, told, reason = TrialState.FAIL, None, f"{type(err).__name__}: {first_line(err)}"
        if not isinstance(err, UmxTuneError):  # not a user error: the traceback helps find the bug
            traceback.print_exc(file=sys.stderr)
    frozen, reason = _finish(ctx, study, trial, state, told, reason, attrs)
    if options.progress:
        print(progress.trial_line(ctx, frozen, reason), file=sys.stderr)
        print(progress.study_line(ctx, study), file=sys.stderr)
    return frozen.state.name


def _give_back(study: optuna.Study, trial: optuna.Trial, reason: str, counted: bool) -> FrozenTrial | None:
    """Fail a trial that was stopped, not finished, and queue it again at once, before anything
    waits on MLflow (a SIGKILL that follows a SIGTERM then loses nothing). Returns the failed trial,
    or None where another worker failed it as stale first (and queued it itself).

    counted=False (MLflow unreachable, not the trial's fault) spends none of its retries; nor is
    its run ended then (that would wait out MLflow's own minutes of retries): its heartbeat stops,
    and the next run started in the experiment ends it FAILED.
    """
    try:
        trial.set_user_attr(REASON_ATTR, reason)
        frozen = study.tell(trial, state=TrialState.FAIL)
    except (UpdateFinishedTrialError, ValueError):
        return None
    requeue(study, frozen, counted)
    return frozen


def _finish(
    ctx: StudyContext,
    study: optuna.Study,
    trial: optuna.Trial,
    state: TrialState,
    values: list[float] | None,
    reason: str | None,
    attrs: dict[str, object],
) -> tuple[FrozenTrial, str | None]:
    """Tell Optuna (the record of truth), then mirror the outcome on the trial's run, unless the
    run's end already carried it (mirrored_by_run).

    Returns the finished trial and the reason it has no value (None when it has one)."""
    try:
        for key, value in {**attrs, **({REASON_ATTR: reason} if reason else {})}.items():
            trial.set_user_attr(key, value)
        frozen = study.tell(trial, values=values, state=None if values is not None else state)
    except (UpdateFinishedTrialError, ValueError):
        # another worker took this one for dead (missed heartbeats) and has queued it again
        frozen = ctx.storage.get_trial(trial._trial_id)
        if not frozen.state.is_finished():
            raise
        reason = f"finished after being failed as stale; its retry counts instead ({reason or 'ok'})"
    if frozen.state == TrialState.FAIL and reason is None:
        reason = f"objective value not usable: {values}"  # Optuna fails NaN values itself
    if not mirrored_by_run(frozen, reason, values):
        _mirror_end(frozen, reason)
    return frozen, reason


def mirrored_by_run(frozen: FrozenTrial, reason: str | None, told: list[float] | None) -> bool:
    """Whether the trial's run already ended with this outcome: run_trial puts a complete trial's
    state and (finite) values into the run's last batch, before Optuna is told."""
    _, staged = mirror.outcome(TrialState.COMPLETE, told)
    return bool(staged) and frozen.state == TrialState.COMPLETE and reason is None and frozen.values == told


def _mirror_end(frozen: FrozenTrial, reason: str | None) -> None:
    """The finished trial's outcome on its run, if it has one."""
    run_id = frozen.user_attrs.get(mirror.RUN_ID_ATTR)
    if run_id:
        mirror.record_trial_end(run_id, frozen, reason)


def on_stale_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """Optuna's callback for a trial whose worker stopped beating: queue it again, fail its run
    (queued first: a tracking server that is down then loses no trial)."""
    print(f"{study.study_name}: trial {trial.number} lost its worker (no heartbeat)", file=sys.stderr)
    requeue(study, trial)
    # by its study and number too: a worker killed before the trial learned its run id
    mirror.mark_lost(trial, "worker lost: no heartbeat within the grace period", study.study_name)


def requeue(study: optuna.Study, trial: FrozenTrial, counted: bool = True) -> None:
    """Queue an unfinished trial's config again (same params and grid entry), a few times at most;
    a requeue that is not the trial's fault (counted=False: tracking was unreachable) is free."""
    retries = int(trial.user_attrs.get(RETRIES_ATTR, 0))
    if counted and retries >= MAX_RETRIES:
        print(f"{study.study_name}: trial {trial.number} given up after {retries} retries", file=sys.stderr)
        return
    params = trial.params or trial.system_attrs.get("fixed_params", {})
    retry_of = trial.user_attrs.get(mirror.RETRY_OF_ATTR, trial.number)
    attrs = {mirror.RETRY_OF_ATTR: retry_of, RETRIES_ATTR: retries + int(counted)}
    for kept in (GRID_ENTRY_ATTR, REPLICATE_ATTR, CONFIRMS_ATTR):
        if kept in trial.user_attrs:
            attrs[kept] = trial.user_attrs[kept]
    study.enqueue_trial(params, user_attrs=attrs)


def fail_stale_trials(study: optuna.Study) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _beat(storage: BaseStorage, trial_id: int) -> None:
    """One heartbeat of the trial, where the storage keeps them."""
    if _interval(storage) is not None:
        storage.record_heartbeat(trial_id)  # type: ignore[attr-defined]


def _interval(storage: BaseStorage) -> int | None:
    """The storage's heartbeat interval in seconds (None: it keeps no heartbeats)."""
    return getattr(storage, "get_heartbeat_interval", lambda: None)()


@contextmanager
def heartbeat(storage: BaseStorage, trial_id: int) -> Iterator[None]:
    """Record the trial's heartbeat every interval from a thread while the block runs."""
    interval = _interval(storage)
    if interval is None:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            # a missed beat (busy database) is no loss: the grace period spans several beats
            with contextlib.suppress(Exception):
                storage.record_heartbeat(trial_id)  # type: ignore[attr-defined]
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)
