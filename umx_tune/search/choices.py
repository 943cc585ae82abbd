"""Samplers and pruners by name, as `--sampler` and `--pruner` choose them."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler

from umx_tune.errors import ConfigError


@dataclass(frozen=True)
class PrunerSettings:
    startup_trials: int  # trials that finish before anything is pruned
    max_epochs: int  # the most epochs any trial of the study trains (Hyperband's max resource)


def _tpe(seed: int | None) -> BaseSampler:
    # constant_liar: with several workers, running trials count as bad guesses, so that parallel
    # workers do not all sample the same promising region
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)


SAMPLERS: dict[str, Callable[[int | None], BaseSampler]] = {
    "tpe": _tpe,
    "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
    "cmaes": lambda seed: optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False),
    "gp": lambda seed: optuna.samplers.GPSampler(seed=seed),
    "qmc": lambda seed: optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False),
    "nsga2": lambda seed: optuna.samplers.NSGAIISampler(seed=seed),
}

PRUNERS: dict[str, Callable[[PrunerSettings], BasePruner]] = {
    "median": lambda s: optuna.pruners.MedianPruner(n_startup_trials=s.startup_trials, n_warmup_steps=0),
    "hyperband": lambda s: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=s.max_epochs),
    "successive-halving": lambda s: optuna.pruners.SuccessiveHalvingPruner(min_resource=1),
    "none": lambda s: optuna.pruners.NopPruner(),
}


def check_names(sampler: str, pruner: str) -> None:
    """Unknown names are a ConfigError (checked before anything starts)."""
    if sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if pruner not in PRUNERS:
        raise ConfigError(f"unknown pruner {pruner!r}; choose one of {', '.join(PRUNERS)}")


def make_sampler(name: str, seed: int | None) -> BaseSampler:
    """The sampler; one whose optional dependency is missing is a ConfigError saying which."""
    check_names(name, "none")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            return SAMPLERS[name](seed)
    except ImportError as err:
        raise ConfigError(f"sampler {name!r} needs a package that is not installed: {err}") from None


def make_pruner(name: str, settings: PrunerSettings) -> BasePruner:
    check_names("tpe", name)
    return PRUNERS[name](settings)
