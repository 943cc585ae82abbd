"""What a study optimizes: a registry of objectives, each read off a finished pipeline run.

An objective names its values' directions, computes them from the ExperimentResult, and says what
each epoch reports to Optuna for pruning. Add one with `register` (a two-objective search returns two
values and leaves `intermediate` None: Optuna does not prune multi-objective studies).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from umx_tune import tracking
from umx_tune.errors import ConfigError

if TYPE_CHECKING:  # the CLI imports this registry; torch is only needed once a trial runs
    from umx_tune.pipeline import ExperimentResult
    from umx_tune.training.trainer import EpochResult


@dataclass(frozen=True)
class Objective:
    name: str
    help: str
    directions: tuple[str, ...]  # "minimize" / "maximize", one per value
    metric_names: tuple[str, ...]  # what each value is, as Optuna metric names
    values: Callable[[ExperimentResult], tuple[float, ...]]
    # per-epoch value reported for pruning, oriented like the (single) objective; None: no pruning
    intermediate: Callable[[EpochResult], float] | None = None

    @property
    def multi(self) -> bool:
        return len(self.directions) > 1


OBJECTIVES: dict[str, Objective] = {}


def register(objective: Objective) -> Objective:
    """Add an objective to the registry `--objective` chooses from."""
    OBJECTIVES[objective.name] = objective
    return objective


def get(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]


def _target_score(result: ExperimentResult, metric: str) -> float:
    value = result.evaluation.scores.get(result.config.target, {}).get(metric, math.nan)
    if not math.isfinite(value):
        raise ValueError(f"{metric} of {result.config.target} is {value}; nothing to optimize")
    return value


register(
    Objective(
        name="valid_loss",
        help="best per-epoch validation loss (minimize); pruned on the validation loss",
        directions=("minimize",),
        metric_names=(tracking.VALID_LOSS,),
        values=lambda result: (result.state.best_loss,),
        intermediate=lambda epoch: epoch.valid_loss,
    )
)

register(
    Objective(
        name="sdr",
        help="SDR of the target on the test tracks (maximize); pruned on the negated validation loss",
        directions=("maximize",),
        metric_names=("SDR",),
        values=lambda result: (_target_score(result, "SDR"),),
        # the study maximizes, so the pruner must see a value where higher is better
        intermediate=lambda epoch: -epoch.valid_loss,
    )
)


def _rtf(result: ExperimentResult) -> float:
    if result.speed is None or not math.isfinite(result.speed.rtf_compute):
        raise ValueError("the run has no real-time factor; nothing to optimize")
    return result.speed.rtf_compute  # load-robust: workers beside it do not move the front


register(
    Objective(
        name="sdr_rtf",
        help="SDR (maximize) and offline real-time factor rtf_compute (minimize): a Pareto front, no pruning",
        directions=("maximize", "minimize"),
        metric_names=("SDR", tracking.REALTIME_FACTOR_COMPUTE),
        values=lambda result: (_target_score(result, "SDR"), _rtf(result)),
    )
)
