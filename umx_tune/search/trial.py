"""One trial: Optuna's trial becomes a TrainConfig, which runs the one pipeline in a nested run.

The objective never builds anything from the trial itself: `plan.config_for` returns a plain
TrainConfig, and `run_experiment` takes it from there, exactly as `umx-tune train` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState

from umx_tune import tracking
from umx_tune.pipeline import run_experiment
from umx_tune.search import mirror
from umx_tune.search.confirm import CONFIRMS_ATTR
from umx_tune.search.objectives import Objective
from umx_tune.search.plans import GRID_ENTRY_ATTR
from umx_tune.search.settings import REPLICATE_ATTR
from umx_tune.search.setup import StudyContext
from umx_tune.tracking.runs import RunTracker, start_run
from umx_tune.training.trainer import EpochCallback, EpochResult


class Pruned(optuna.TrialPruned):
    """Optuna's TrialPruned, carrying the epoch it happened at."""

    def __init__(self, epoch: int) -> None:
        super().__init__(f"pruned at epoch {epoch}")
        self.epoch = epoch


@dataclass(frozen=True)
class TrialOptions:
    checkpoint_root: Path
    progress: bool  # per-trial and per-epoch progress lines (--quiet: none)
    heartbeat_interval: int  # seconds between the trial run's heartbeats (--heartbeat-interval)


def run_name(ctx: StudyContext, trial: optuna.Trial) -> str:
    """A grid trial's run is named after its entry (every replicate alike), a search trial's after
    the study and its number."""
    entry = trial.user_attrs.get(GRID_ENTRY_ATTR)
    # a confirmation is named after the search trial whose config it runs with another seed
    return entry or f"{ctx.settings.name}-{trial.user_attrs.get(CONFIRMS_ATTR, trial.number)}"


def label(trial: optuna.Trial | optuna.trial.FrozenTrial) -> str:
    """How progress lines name a trial: 'open-unmix3', 'open-unmix3 replicate 2', 'trial 7'."""
    entry = trial.user_attrs.get(GRID_ENTRY_ATTR)
    confirms = trial.user_attrs.get(CONFIRMS_ATTR)
    replicate = trial.user_attrs.get(REPLICATE_ATTR, 0)
    if confirms is not None:
        return f"trial {confirms} replicate {replicate}"
    if entry is None:
        return f"trial {trial.number}"
    return f"{entry} replicate {replicate}" if replicate else entry


def run_trial(ctx: StudyContext, trial: optuna.Trial, options: TrialOptions) -> tuple[float, ...]:
    """Train and evaluate the trial's config in a child run of the study; returns its values.

    The run ends with the outcome its worker is about to tell Optuna (COMPLETE and the values, in
    the run's last batch, where the values are finite): the worker mirrors the trial again only
    where Optuna records another (worker.mirrored_by_run). Raises Pruned (the run ends KILLED), or
    whatever failed (the run ends FAILED with the reason).
    """
    entry = trial.user_attrs.get(GRID_ENTRY_ATTR)
    replicate = int(trial.user_attrs.get(REPLICATE_ATTR, 0))
    tags = mirror.trial_tags(ctx.settings, trial, entry)  # the replicate and confirms tags too
    with start_run(
        experiment=ctx.settings.experiment,
        run_name=run_name(ctx, trial),
        parent_run_id=ctx.parent_run_id,
        tags=tags,
        killed_on=(optuna.TrialPruned,),
        system_metrics=ctx.settings.base.system_metrics,  # the worker's own choice (PER_WORKER)
        heartbeat_interval=options.heartbeat_interval,
    ) as tracker:
        # first thing: the run id, so that whoever finds this trial's worker dead can fail its run
        trial.set_user_attr(mirror.RUN_ID_ATTR, tracker.run_id)
        try:
            config = ctx.settings.plan.config_for(trial, ctx.settings.base)
            config = config.replace(seed=config.seed + replicate)
        finally:
            tracker.set_tags(mirror.trial_choices(trial))
        result = run_experiment(
            config,
            tracker,
            on_epoch=_reporter(trial, tracker, ctx.objective),
            checkpoint_root=options.checkpoint_root,
            progress=options.progress,
        )
        trial.set_user_attr(mirror.MODEL_URI_ATTR, result.model_uri)
        values = ctx.objective.values(result)
        tags, metrics = mirror.outcome(TrialState.COMPLETE, values)
        if metrics:  # finite values: what Optuna will record
            tracker.set_tags(tags)
            tracker.log_metrics(metrics)
    return values


def _reporter(trial: optuna.Trial, tracker: RunTracker, objective: Objective) -> EpochCallback:
    """The per-epoch callback: report to Optuna, mirror the report, prune when Optuna says so."""

    def on_epoch(epoch: EpochResult) -> None:
        if objective.intermediate is None:
            return
        value = objective.intermediate(epoch)
        trial.report(value, epoch.epoch)
        tracker.log_metrics({tracking.TRIAL_INTERMEDIATE: value}, step=epoch.epoch)
        if trial.should_prune():
            tracker.set_tags({tracking.TAG_PRUNED_EPOCH: epoch.epoch})
            raise Pruned(epoch.epoch)  # the trial's progress line says so

    return on_epoch
