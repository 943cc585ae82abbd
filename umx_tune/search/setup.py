"""Creating a study or joining one, safely when several workers start at the same moment.

Study creation is the one atomic step Optuna offers (a unique study name). The worker whose
create succeeds sets the study up: it stores the settings, enqueues every trial the study will
run (grid entries, or one empty "ticket" per search trial, so the budget is a queue that workers
claim atomically and can never overshoot), creates the MLflow parent run and marks the study
ready. Every other worker waits for the ready mark and then joins with the stored settings. If
set-up fails, the creator deletes the half-made study so the same command can be run again.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.storages import BaseStorage
from optuna.study import StudyDirection

from umx_tune.errors import ConfigError
from umx_tune.search import mirror, objectives
from umx_tune.search.objectives import Objective
from umx_tune.search.plans import GRID_ENTRY_ATTR, Grid
from umx_tune.search.settings import REPLICATE_ATTR, Request, StudySettings

SETTINGS_ATTR = "umx_tune:settings"
PARENT_RUN_ATTR = "umx_tune:parent_run_id"
READY_ATTR = "umx_tune:ready"
READY_TIMEOUT = 120.0  # seconds a joining worker waits for the creator's set-up


@dataclass
class StudyContext:
    """One worker's handle on a study."""

    settings: StudySettings
    objective: Objective
    storage: BaseStorage  # the raw storage: atomic claims and heartbeats go straight to it
    storage_url: str  # masked
    study_id: int
    parent_run_id: str
    created: bool

    def load(self, sampler: optuna.samplers.BaseSampler, pruner: optuna.pruners.BasePruner) -> optuna.Study:
        return optuna.load_study(
            study_name=self.settings.name, storage=self.storage, sampler=sampler, pruner=pruner
        )


def open_study(
    request: Request, storage: BaseStorage, storage_url: str, adopt_run: str | None
) -> StudyContext:
    """Create the requested study, or join the existing one of that name."""
    name = request.study_name
    created = False
    request = _in_experiment(request, adopt_run)
    if not _exists(storage, name):
        settings, objective = new_study(request, storage_url, adopt_run)
        directions = [StudyDirection[d.upper()] for d in objective.directions]
        try:
            storage.create_new_study(directions, name)
            created = True
        except optuna.exceptions.DuplicatedStudyError:
            pass  # another worker won the race: join its study below
    study_id = storage.get_study_id_from_name(name)
    if created:
        parent = _set_up(storage, study_id, settings, objective, storage_url, adopt_run)
    else:
        stored, parent = _wait_ready(storage, study_id, name)
        settings = request.join(stored)
        objective = objectives.get(settings.objective)
        _check_directions(storage, study_id, objective, name)
        mirror.reopen_parent(parent, settings.experiment)
    return StudyContext(settings, objective, storage, storage_url, study_id, parent, created)


def new_study(request: Request, storage_url: str, adopt_run: str | None) -> tuple[StudySettings, Objective]:
    """The settings and objective of the study request creates; ConfigError where it cannot be
    created. Checked before a storage is opened when the storage does not exist yet, so that a
    refused command does not leave it behind (an empty sqlite file)."""
    settings = _in_experiment(request, adopt_run).new_settings(default_objective="valid_loss")
    objective = objectives.get(settings.objective)
    _check_not_elsewhere(settings, storage_url)
    return settings, objective


def _in_experiment(request: Request, adopt_run: str | None) -> Request:
    """Under `mlflow run` (adopt_run: its run) the study goes into that run's experiment."""
    if adopt_run and request.experiment is None:
        return dataclasses.replace(request, experiment=mirror.experiment_of(adopt_run))
    return request


def _exists(storage: BaseStorage, name: str) -> bool:
    try:
        storage.get_study_id_from_name(name)
    except KeyError:
        return False
    return True


def _check_not_elsewhere(settings: StudySettings, storage_url: str) -> None:
    """A study MLflow knows under this name but in another storage: refuse to start a second one."""
    others = mirror.study_storages(settings.experiment, settings.name) - {storage_url}
    if others:
        raise ConfigError(
            f"study {settings.name!r} is kept in Optuna storage {sorted(others)[0]} (see its MLflow "
            f"parent run), not in {storage_url}; pass --storage to join it, or choose another name"
        )


def _set_up(
    storage: BaseStorage,
    study_id: int,
    settings: StudySettings,
    objective: Objective,
    storage_url: str,
    adopt_run: str | None,
) -> str:
    """Settings, the queue of trials, the parent run, then the ready mark (all or nothing)."""
    parent = None
    try:
        storage.set_study_user_attr(study_id, SETTINGS_ATTR, settings.to_json())
        study = optuna.load_study(study_name=settings.name, storage=storage)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            study.set_metric_names(list(objective.metric_names))
        _enqueue_all(study, settings)
        parent = mirror.create_parent(settings, storage_url, adopt_run)
        storage.set_study_user_attr(study_id, PARENT_RUN_ATTR, parent)
        storage.set_study_user_attr(study_id, READY_ATTR, True)
        return parent
    except BaseException:
        storage.delete_study(study_id)
        if parent is not None:
            mirror.end_parent(parent, "FAILED", "set-up failed")
        raise


def _enqueue_all(study: optuna.Study, settings: StudySettings) -> None:
    if isinstance(settings.plan, Grid):
        # replicate by replicate: an interrupted study has whole grids, not some entries' seeds
        for replicate in range(settings.replicates):
            for entry in settings.plan.entries:
                attrs = {GRID_ENTRY_ATTR: entry.name, REPLICATE_ATTR: replicate}
                study.enqueue_trial(entry.values, user_attrs=attrs)
    elif settings.n_trials is not None:
        for _ in range(settings.n_trials):
            study.enqueue_trial({})  # a ticket: the sampler fills in its params when it is claimed


def _wait_ready(storage: BaseStorage, study_id: int, name: str) -> tuple[StudySettings, str]:
    """The stored settings and parent run id, once the creating worker has finished set-up."""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        try:
            attrs = storage.get_study_user_attrs(study_id)
        except KeyError:
            raise ConfigError(f"study {name!r} was removed while starting (its creator failed)") from None
        if attrs.get(READY_ATTR):
            return StudySettings.from_json(attrs[SETTINGS_ATTR]), attrs[PARENT_RUN_ATTR]
        if time.monotonic() > deadline:
            what = "was not made by umx-tune" if SETTINGS_ATTR not in attrs else "was never fully set up"
            raise ConfigError(f"study {name!r} {what}; choose another --study-name")
        time.sleep(0.5)


def _check_directions(storage: BaseStorage, study_id: int, objective: Objective, name: str) -> None:
    stored = [d.name.lower() for d in storage.get_study_directions(study_id)]
    if tuple(stored) != objective.directions:
        raise ConfigError(f"study {name!r} directions {stored} do not fit objective {objective.name}")
