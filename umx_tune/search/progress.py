"""What `optimize` prints as a study runs (on stderr; --quiet prints none of it).

After each trial a worker finishes, two lines:

    grid: open-unmix3 (trial 2) COMPLETE: valid_loss 1.234 in 0:00:41
    grid: 3/6 trials finished, best valid_loss 1.234 (trial 2), ETA 0:02:03

The count is over the whole study (every worker's trials) against its budget (a grid's entries x
replicates, a search's --n-trials plus its confirmations); a trial that was queued again after its
worker was lost counts once. The ETA is the mean duration of the finished trials x the trials left
/ the workers running them (this one and those with a trial running now).
"""

from __future__ import annotations

import statistics

import optuna
from optuna.trial import FrozenTrial, TrialState

from umx_tune.report.tables import hms
from umx_tune.search.mirror import RETRY_OF_ATTR, best_trial
from umx_tune.search.setup import StudyContext
from umx_tune.search.trial import label


def trial_line(ctx: StudyContext, trial: FrozenTrial, reason: str | None) -> str:
    """A finished trial: its label, state, value(s) (or why it has none) and duration."""
    if trial.state == TrialState.COMPLETE and trial.values is not None:
        names = ctx.objective.metric_names
        outcome = ", ".join(f"{name} {value:.4g}" for name, value in zip(names, trial.values, strict=True))
    else:
        outcome = reason or "no value"
    took = f" in {hms(trial.duration.total_seconds())}" if trial.duration is not None else ""
    return f"{ctx.settings.name}: {named(trial)} {trial.state.name}: {outcome}{took}"


def named(trial: optuna.Trial | FrozenTrial) -> str:
    """'open-unmix3 (trial 2)' for a grid entry, 'trial 2' for a search trial."""
    name = label(trial)
    return name if name == f"trial {trial.number}" else f"{name} (trial {trial.number})"


def study_line(ctx: StudyContext, study: optuna.Study) -> str:
    """The study's progress over its budget: trials finished, the best so far, the time left."""
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state.is_finished()]
    # each trial queued again (a lost worker's) follows one failed trial that it replaces
    done = len(finished) - sum(RETRY_OF_ATTR in t.user_attrs for t in trials)
    budget = ctx.settings.budget
    running = sum(t.state == TrialState.RUNNING for t in trials)
    if budget is None:
        count, eta = f"{done}", "ETA unknown (no --n-trials budget)"
    else:
        count, eta = f"{done}/{budget}", _eta(finished, budget - done, workers=running + 1)
    return f"{ctx.settings.name}: {count} trials finished, {_best(ctx, study)}, {eta}"


def _best(ctx: StudyContext, study: optuna.Study) -> str:
    if ctx.objective.multi:
        front = study.best_trials
        return f"{len(front)} on the Pareto front" if front else "no complete trial yet"
    best = best_trial(study, ctx.objective)
    if best is None:
        return "no complete trial yet"
    return f"best {ctx.objective.metric_names[0]} {best.values[0]:.4g} (trial {best.number})"


def _eta(finished: list[FrozenTrial], left: int, workers: int) -> str:
    if left <= 0:
        return "done"
    durations = [t.duration.total_seconds() for t in finished if t.duration is not None]
    if not durations:
        return "ETA unknown"
    return f"ETA {hms(statistics.mean(durations) * left / workers)}"
