"""A study's settings: fixed when the study is created, stored with it, checked when a worker joins."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from typing import Any

from umx_tune.config import TrainConfig, coerce, param_fields
from umx_tune.errors import ConfigError
from umx_tune.search.plans import Grid, Space, plan_from_json
from umx_tune.tracking import DEFAULT_EXPERIMENT

# parameters a worker may set for itself: they depend on its machine, not on the study
PER_WORKER = ("device", "nb_workers", "threads", "system_metrics")
# Optuna user attr: the replicate a grid trial runs; replicate r trains with the entry's seed + r
REPLICATE_ATTR = "replicate"
CONFIRM_SEEDS = 3  # seeds per config of --confirm-best when --replicates is not given


@dataclass(frozen=True)
class StudySettings:
    name: str
    plan: Grid | Space
    objective: str
    n_trials: int | None  # search: the budget across all workers (None: until --timeout/Ctrl-C)
    base: TrainConfig
    sampler: str
    pruner: str
    experiment: str  # the MLflow experiment of the parent and trial runs
    replicates: int = 1  # seeds per grid entry or per confirmed config (the base seed, +1, +2, ...)
    confirm_best: int = 0  # search: how many of its best configs run again with `replicates` seeds

    @property
    def budget(self) -> int | None:
        """How many trials the study runs in all: a grid's entries x replicates, a search's n_trials."""
        if isinstance(self.plan, Grid):
            return len(self.plan.entries) * self.replicates
        if self.n_trials is None:
            return None
        return self.n_trials + self.confirm_best * (self.replicates - 1)

    def to_json(self) -> str:
        return json.dumps(
            {
                "name": self.name,
                "plan": self.plan.to_json(),
                "objective": self.objective,
                "n_trials": self.n_trials,
                "base": self.base.to_params(),
                "sampler": self.sampler,
                "pruner": self.pruner,
                "experiment": self.experiment,
                "replicates": self.replicates,
                "confirm_best": self.confirm_best,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> StudySettings:
        data = json.loads(text)
        return cls(
            name=data["name"],
            plan=plan_from_json(data["plan"]),
            objective=data["objective"],
            n_trials=data["n_trials"],
            base=TrainConfig.from_dict(data["base"]),
            sampler=data["sampler"],
            pruner=data["pruner"],
            experiment=data["experiment"],
            replicates=data.get("replicates", 1),  # studies made before replicates existed
            confirm_best=data.get("confirm_best", 0),
        )


@dataclass(frozen=True)
class Request:
    """What a worker was asked on its command line; None/empty where the user gave nothing."""

    study_name: str
    plan: Grid | Space | None
    objective: str | None
    n_trials: int | None
    base_values: dict[str, Any]  # the train options given explicitly
    sampler: str | None
    pruner: str | None
    experiment: str | None
    replicates: int | None = None
    confirm_best: int | None = None

    def identity(self) -> str:
        """What this request asks of its study, without the options a worker sets for itself: two
        workers with the same identity run the same study the same way."""
        return json.dumps(
            {
                **{
                    f.name: getattr(self, f.name)
                    for f in fields(self)
                    if f.name not in ("plan", "base_values")
                },
                "plan": self.plan.to_json() if self.plan is not None else None,
                "base": {k: v for k, v in self.base_values.items() if k not in PER_WORKER},
            },
            sort_keys=True,
            default=str,
        )

    def new_settings(self, default_objective: str) -> StudySettings:
        """The settings of a study this request creates."""
        if self.plan is None:
            raise ConfigError(f"no study named {self.study_name!r} yet; start it with --grid or --search")
        return StudySettings(
            name=self.study_name,
            plan=self.plan,
            objective=self.objective or default_objective,
            n_trials=self.n_trials,
            base=TrainConfig.from_dict(self.base_values),
            sampler=self.sampler or "tpe",
            # a grid replays its entries in full; a search prunes unless told otherwise
            pruner=self.pruner or ("none" if isinstance(self.plan, Grid) else "median"),
            experiment=self.experiment or DEFAULT_EXPERIMENT,
            # a confirmation without a seed count runs 3 seeds of each config
            replicates=self.replicates or (CONFIRM_SEEDS if self.confirm_best else 1),
            confirm_best=self.confirm_best or 0,
        )

    def join(self, stored: StudySettings) -> StudySettings:
        """The stored settings, with this worker's own choices; a conflict is a ConfigError."""
        name = f"study {stored.name!r}"
        if self.plan is not None and _content(self.plan) != _content(stored.plan):
            raise ConfigError(
                f"{name} runs {stored.plan.mode} {stored.plan.name}, not {self.plan.name} as given"
            )
        if self.objective is not None and self.objective != stored.objective:
            raise ConfigError(f"{name} optimizes {stored.objective}, not {self.objective}; use another name")
        if self.experiment is not None and self.experiment != stored.experiment:
            raise ConfigError(
                f"{name} is tracked in MLflow experiment {stored.experiment!r}, not {self.experiment!r}"
            )
        if self.n_trials is not None and self.n_trials != stored.n_trials:
            raise ConfigError(f"{name} has a budget of {stored.n_trials} trials, not {self.n_trials}")
        if self.replicates is not None and self.replicates != stored.replicates:
            raise ConfigError(f"{name} runs {stored.replicates} replicates per entry, not {self.replicates}")
        if self.confirm_best is not None and self.confirm_best != stored.confirm_best:
            raise ConfigError(
                f"{name} confirms its best {stored.confirm_best} configs, not {self.confirm_best}"
            )
        fields = {f.name: f for f in param_fields()}
        given = {key: coerce(fields[key], value) for key, value in self.base_values.items()}
        conflicts = [
            f"{key}={getattr(stored.base, key)!r} (given {value!r})"
            for key, value in given.items()
            if key not in PER_WORKER and value != getattr(stored.base, key)
        ]
        if conflicts:
            raise ConfigError(f"{name} was created with {', '.join(conflicts)}; drop or match those options")
        own = {k: v for k, v in self.base_values.items() if k in PER_WORKER}
        return replace(
            stored,
            base=stored.base.replace(**own),
            sampler=self.sampler or stored.sampler,
            pruner=self.pruner or stored.pruner,
        )


def _content(plan: Grid | Space) -> dict[str, Any]:
    """What a plan runs, without its name (the same file may be given by another path)."""
    data = json.loads(plan.to_json())
    data.pop("name")
    return data
