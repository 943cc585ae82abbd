"""The study's MLflow mirror: the parent run, each trial's tags and state, the summary at the end.

Trial runs themselves are started by `start_run` inside the one pipeline (trial.py); this
module writes what happens around them through MlflowClient, so that finished runs stay finished and
runs of other (dead) workers can be marked. Every name it writes comes from umx_tune.tracking.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import optuna
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from optuna.distributions import distribution_to_json
from optuna.trial import FrozenTrial, TrialState

from umx_tune import tracking
from umx_tune.errors import TrackingError, first_line
from umx_tune.search.objectives import Objective
from umx_tune.search.settings import StudySettings
from umx_tune.search.study_plots import write_study_plots
from umx_tune.tracking.runs import artifact_tempdir, version_tags

RUN_ID_ATTR = "mlflow_run_id"  # Optuna user attr: the trial's MLflow run
MODEL_URI_ATTR = "model_uri"  # Optuna user attr: the model the trial's run logged


@contextmanager
def tracking_errors(doing: str) -> Iterator[None]:
    """MLflow's refusals as a one-line TrackingError (credentials named when they are the cause)."""
    try:
        yield
    except MlflowException as err:
        text = first_line(err)
        if "401" in text or "not authenticated" in text.lower() or "403" in text:
            text = (
                "the server rejected the credentials (MLFLOW_TRACKING_USERNAME / "
                f"MLFLOW_TRACKING_PASSWORD): {text}"
            )
        raise TrackingError(f"MLflow refused {doing}: {text}") from None


def _client() -> MlflowClient:
    return MlflowClient()


def experiment_id(name: str) -> str:
    """The experiment's id, creating it (another worker may create it at the same moment)."""
    client = _client()
    try:
        found = client.get_experiment_by_name(name)
        if found is None:
            try:
                return client.create_experiment(name)
            except MlflowException:
                found = client.get_experiment_by_name(name)  # lost the race: read the winner's
        if found is None:
            raise TrackingError(f"MLflow experiment {name!r} cannot be created")
        return found.experiment_id
    except MlflowException as err:
        raise TrackingError(f"MLflow refused experiment {name!r}: {first_line(err)}") from None


def experiment_of(run_id: str) -> str:
    """The name of the experiment a run belongs to."""
    client = _client()
    return client.get_experiment(client.get_run(run_id).info.experiment_id).name


def study_storages(experiment: str, study_name: str) -> set[str]:
    """The Optuna storages of the study parent runs of this name MLflow already holds."""
    found = _client().get_experiment_by_name(experiment)
    if found is None:
        return set()
    runs = _client().search_runs(
        [found.experiment_id], filter_string=f"tags.`{tracking.TAG_STUDY}` = '{_quote(study_name)}'"
    )
    return {
        r.data.tags[tracking.TAG_STUDY_STORAGE]
        for r in runs
        if tracking.TAG_PARENT_RUN not in r.data.tags and tracking.TAG_STUDY_STORAGE in r.data.tags
    }


def create_parent(settings: StudySettings, storage: str, adopt: str | None) -> str:
    """The study's parent run (or adopt, the run `mlflow run` made for us), left RUNNING."""
    client = _client()
    objective_tags = {
        tracking.TAG_STUDY: settings.name,
        tracking.TAG_STUDY_MODE: settings.plan.mode,
        tracking.TAG_STUDY_PLAN: settings.plan.name,
        tracking.TAG_STUDY_STORAGE: storage,
        tracking.TAG_STUDY_STATE: "running",
        tracking.TAG_OBJECTIVE: settings.objective,
        tracking.TAG_SAMPLER: settings.sampler,
        tracking.TAG_PRUNER: settings.pruner,
        **version_tags(),
    }
    if adopt:
        run_id = adopt
        client.update_run(run_id, status="RUNNING", name=settings.name)
    else:
        tags = {**objective_tags, tracking.TAG_RUN_NAME: settings.name}
        run_id = client.create_run(
            experiment_id(settings.experiment), tags=tags, run_name=settings.name
        ).info.run_id
    client.log_batch(run_id, tags=[mlflow.entities.RunTag(k, str(v)) for k, v in objective_tags.items()])
    params = [mlflow.entities.Param(k, str(v)) for k, v in settings.base.to_params().items()]
    client.log_batch(run_id, params=params)
    client.log_text(run_id, settings.plan.to_json(), f"{tracking.STUDY_ARTIFACT_DIR}/plan.json")
    return run_id


def trial_tags(settings: StudySettings, trial: optuna.Trial, entry: str | None) -> dict[str, str]:
    """Tags a trial's run starts with."""
    tags = {
        tracking.TAG_STUDY: settings.name,
        tracking.TAG_TRIAL_NUMBER: str(trial.number),
        tracking.TAG_TRIAL_STATE: TrialState.RUNNING.name,
    }
    if entry:
        tags[tracking.TAG_GRID_ENTRY] = entry
    retry_of = trial.user_attrs.get("retry_of")
    if retry_of is not None:
        tags[tracking.TAG_TRIAL_RETRY_OF] = str(retry_of)
    return tags


def trial_choices(trial: optuna.Trial | FrozenTrial) -> dict[str, str]:
    """The trial's params and distributions as tags (MLflow params hold the full config)."""
    dists = {name: json.loads(distribution_to_json(d)) for name, d in trial.distributions.items()}
    return {
        tracking.TAG_TRIAL_PARAMS: json.dumps(trial.params, sort_keys=True),
        tracking.TAG_TRIAL_DISTRIBUTIONS: json.dumps(dists, sort_keys=True),
    }


def record_trial_end(run_id: str, trial: FrozenTrial, reason: str | None = None) -> None:
    """The Optuna outcome on the trial's (already ended) run: state, value, reason."""
    client = _client()
    tags = [mlflow.entities.RunTag(tracking.TAG_TRIAL_STATE, trial.state.name)]
    if reason:
        tags.append(mlflow.entities.RunTag(tracking.TAG_ERROR, reason[:5000]))
    metrics = []
    if trial.values is not None and all(math.isfinite(v) for v in trial.values):
        now = _now_ms()
        names = [tracking.TRIAL_VALUE] + [f"{tracking.TRIAL_VALUE}_{i}" for i in range(1, len(trial.values))]
        metrics = [mlflow.entities.Metric(n, v, now, 0) for n, v in zip(names, trial.values, strict=True)]
    client.log_batch(run_id, tags=tags, metrics=metrics)


def mark_lost(trial: FrozenTrial, reason: str) -> None:
    """A trial whose worker died: its run (if it got one) ends FAILED with the reason."""
    run_id = trial.user_attrs.get(RUN_ID_ATTR)
    if not run_id:
        return
    client = _client()
    record_trial_end(run_id, trial, reason)
    if client.get_run(run_id).info.status == "RUNNING":
        client.set_terminated(run_id, status=RunStatus.to_string(RunStatus.FAILED))


def finalize(parent_run_id: str, study: optuna.Study, objective: Objective, state: str) -> FrozenTrial | None:
    """Best trial, counts and plots on the parent run; returns the best trial (None if none)."""
    client = _client()
    best = _best_trial(study, objective)
    tags = {tracking.TAG_STUDY_STATE: state}
    metrics: dict[str, float] = {}
    for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
        metrics[f"trials_{s.name.lower()}"] = len(study.get_trials(deepcopy=False, states=(s,)))
    if best is not None:
        tags[tracking.TAG_BEST_TRIAL] = str(best.number)
        tags[tracking.TAG_BEST_RUN] = str(best.user_attrs.get(RUN_ID_ATTR, ""))
        tags.update({tracking.TAG_BEST_PARAM_PREFIX + k: str(v) for k, v in best.params.items()})
        metrics[tracking.BEST_VALUE] = best.values[0]
    client.log_batch(
        parent_run_id,
        tags=[mlflow.entities.RunTag(k, v) for k, v in tags.items()],
        metrics=[mlflow.entities.Metric(k, v, _now_ms(), 0) for k, v in metrics.items()],
    )
    with artifact_tempdir() as tmp:
        folder = Path(tmp)
        for png in write_study_plots(study, folder):
            client.log_artifact(parent_run_id, str(png), "plots")
        _write_trials_table(study, folder / "trials.csv")
        client.log_artifact(parent_run_id, str(folder / "trials.csv"), tracking.STUDY_ARTIFACT_DIR)
    if best is not None:
        summary = {"number": best.number, "values": best.values, "params": best.params, **best.user_attrs}
        client.log_text(
            parent_run_id, json.dumps(summary, indent=2), f"{tracking.STUDY_ARTIFACT_DIR}/best.json"
        )
    return best


def record_pareto_front(parent_run_id: str, study: optuna.Study) -> list[FrozenTrial]:
    """A multi-objective study's Pareto front (Optuna's best_trials), tagged on every complete trial's
    run (true/false, so a trial that left the front on a resume loses its mark) and on the parent."""
    client = _client()
    front = sorted(study.best_trials, key=lambda t: t.number)
    on_front = {t.number for t in front}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        run_id = trial.user_attrs.get(RUN_ID_ATTR)
        if run_id:
            client.set_tag(run_id, tracking.TAG_PARETO, str(trial.number in on_front).lower())
    client.set_tag(parent_run_id, tracking.TAG_PARETO_TRIALS, ",".join(str(t.number) for t in front))
    summary = [{**best_summary(t), "run_id": t.user_attrs.get(RUN_ID_ATTR)} for t in front]
    client.log_text(
        parent_run_id, json.dumps(summary, indent=2), f"{tracking.STUDY_ARTIFACT_DIR}/pareto_front.json"
    )
    return front


def end_parent(parent_run_id: str, status: str) -> None:
    """End the parent run FINISHED or KILLED (a later resume reopens it)."""
    _client().set_terminated(parent_run_id, status=status)


def is_finished(run_id: str) -> bool:
    return _client().get_run(run_id).info.status == "FINISHED"


def reopen_parent(parent_run_id: str) -> None:
    """Mark an ended parent RUNNING again while this worker works on the study."""
    client = _client()
    if client.get_run(parent_run_id).info.status != "RUNNING":
        client.update_run(parent_run_id, status="RUNNING")
        client.set_tag(parent_run_id, tracking.TAG_STUDY_STATE, "running")


def register_best(parent_run_id: str, best: FrozenTrial, name: str) -> str:
    """Register the best trial's model as a new version of `name`; returns 'name/version'."""
    run_id = best.user_attrs.get(RUN_ID_ATTR)
    model_uri = best.user_attrs.get(MODEL_URI_ATTR)
    if not run_id or not model_uri:
        raise TrackingError(f"best trial {best.number} has no logged model to register")
    client = _client()
    try:
        # several workers may conclude at once: one version per best run
        for existing in client.search_model_versions(f"name = '{_quote(name)}'"):
            if existing.run_id == run_id:
                return f"{name}/{existing.version}"
        version = mlflow.register_model(model_uri, name)
    except MlflowException as err:
        raise TrackingError(f"cannot register the best model as {name!r}: {first_line(err)}") from None
    label = f"{name}/{version.version}"
    client.set_tag(parent_run_id, tracking.TAG_REGISTERED_MODEL, label)
    return label


def _best_trial(study: optuna.Study, objective: Objective) -> FrozenTrial | None:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None
    sign = 1.0 if objective.directions[0] == "minimize" else -1.0
    return min(complete, key=lambda t: sign * t.values[0])


def _write_trials_table(study: optuna.Study, path: Path) -> None:
    frame = study.trials_dataframe(attrs=("number", "state", "value", "params", "user_attrs", "duration"))
    frame.to_csv(path, index=False)


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


def pop_project_run() -> str | None:
    """The run `mlflow run` started for this process (MLFLOW_RUN_ID), removed from the environment
    so that trial runs do not reuse it; the study's parent run adopts it."""
    return os.environ.pop("MLFLOW_RUN_ID", None) or None


def best_summary(best: FrozenTrial | None) -> dict[str, Any]:
    if best is None:
        return {}
    return {"number": best.number, "values": best.values, "params": best.params}
