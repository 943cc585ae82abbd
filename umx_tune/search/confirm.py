"""`--confirm-best K`: at the end of a search, its best K configs run again with more seeds, so
that the winner is the config with the best mean over seeds, not a lucky seed.

The search trial of a config is its replicate 0 (the base seed); replicates 1 … N-1 are queued as
trials with the same params (Optuna's fixed params) and the seed + r, once, by the worker that
finished the search's last trial.
"""

from __future__ import annotations

from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from umx_tune.evaluation import statistics
from umx_tune.evaluation.statistics import Interval
from umx_tune.search.objectives import Objective
from umx_tune.search.settings import REPLICATE_ATTR, StudySettings

CONFIRMS_ATTR = "confirms"  # Optuna user attr: the search trial whose config this trial re-runs


@dataclass(frozen=True)
class Confirmed:
    """A confirmed config: its search trial, the trials of every seed, the objective over seeds."""

    trial: FrozenTrial
    numbers: tuple[int, ...]
    value: Interval


def pending(settings: StudySettings, study: optuna.Study) -> bool:
    """Whether the study confirms its best configs and has not queued their replicates yet."""
    if settings.confirm_best == 0:
        return False
    return not any(CONFIRMS_ATTR in t.user_attrs for t in study.get_trials(deepcopy=False))


def _search_trials(study: optuna.Study) -> list[FrozenTrial]:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return [t for t in complete if CONFIRMS_ATTR not in t.user_attrs]


def enqueue(settings: StudySettings, study: optuna.Study, objective: Objective) -> list[int]:
    """Queue replicates 1 … N-1 of the best K search trials; returns those trials' numbers."""
    sign = 1.0 if objective.directions[0] == "minimize" else -1.0
    best = sorted(_search_trials(study), key=lambda t: sign * t.values[0])[: settings.confirm_best]
    for trial in best:
        for replicate in range(1, settings.replicates):
            attrs = {CONFIRMS_ATTR: trial.number, REPLICATE_ATTR: replicate}
            study.enqueue_trial(trial.params, user_attrs=attrs)
    return [t.number for t in best]


def confirmed(study: optuna.Study, objective: Objective) -> list[Confirmed]:
    """The confirmed configs, best mean over seeds first (each with its interval over seeds)."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    seeds: dict[int, list[FrozenTrial]] = {}
    for trial in trials:
        if CONFIRMS_ATTR in trial.user_attrs:
            seeds.setdefault(int(trial.user_attrs[CONFIRMS_ATTR]), []).append(trial)
    by_number = {t.number: t for t in trials}
    found = []
    for number, replicates in seeds.items():
        if number not in by_number:
            continue
        runs = [by_number[number], *replicates]
        values = [t.values[0] for t in runs]
        interval = statistics.bootstrap_mean(values, unit=statistics.UNIT_SEEDS)
        found.append(Confirmed(by_number[number], tuple(t.number for t in runs), interval))
    sign = 1.0 if objective.directions[0] == "minimize" else -1.0
    return sorted(found, key=lambda c: sign * c.value.estimate)
