"""The study's MLflow mirror: the parent run, each trial's tags and state, the summary at the end.

Trial runs themselves are started by `start_run` inside the one pipeline (trial.py); this
module writes what happens around them through the tracking gateway (every call named by its run
id and retried by the one policy), so that finished runs stay finished and runs of other (dead)
workers can be marked. Every name it writes comes from umx_tune.tracking.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import distribution_to_json
from optuna.trial import FrozenTrial, TrialState

from umx_tune import tracking
from umx_tune.errors import TrackingError
from umx_tune.search.confirm import CONFIRMS_ATTR, Confirmed
from umx_tune.search.importance import param_importances
from umx_tune.search.importance import to_csv as importances_csv
from umx_tune.search.objectives import Objective
from umx_tune.search.settings import REPLICATE_ATTR, StudySettings
from umx_tune.search.study_plots import write_study_plots
from umx_tune.tracking.client import Client
from umx_tune.tracking.runs import artifact_tempdir, version_tags

# Optuna user attrs the mirror reads
RUN_ID_ATTR = "mlflow_run_id"  # the trial's MLflow run
MODEL_URI_ATTR = "model_uri"  # the model the trial's run logged
RETRY_OF_ATTR = "retry_of"  # the number of the trial a requeued trial runs again
# the MLflow status of a finished trial's run (a FAIL interrupted by Ctrl-C ends KILLED, too)
RUN_STATUS = {
    TrialState.COMPLETE: tracking.STATUS_FINISHED,
    TrialState.PRUNED: tracking.STATUS_KILLED,
    TrialState.FAIL: tracking.STATUS_FAILED,
}


def experiment_of(run_id: str) -> str:
    """The name of the experiment a run belongs to."""
    client = Client()
    return client.experiment_name(client.get_run(run_id).info.experiment_id)


def study_storages(experiment: str, study_name: str) -> set[str]:
    """The Optuna storages of the study parent runs of this name MLflow already holds."""
    query = tracking.tag_equals(tracking.TAG_STUDY, study_name)  # refuses a name MLflow cannot match
    client = Client()
    experiment_id = client.known_experiment_id(experiment)
    if experiment_id is None:
        return set()
    runs = client.search_runs([experiment_id], query)
    return {
        r.data.tags[tracking.TAG_STUDY_STORAGE]
        for r in runs
        if tracking.TAG_PARENT_RUN not in r.data.tags and tracking.TAG_STUDY_STORAGE in r.data.tags
    }


def create_parent(settings: StudySettings, storage: str, adopt: str | None) -> str:
    """The study's parent run (or adopt, the run `mlflow run` made for us), left RUNNING."""
    client = Client()
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
        client.reopen_run(run_id, settings.name)
        client.log(run_id, tags=objective_tags)
    else:
        experiment = client.experiment_id(settings.experiment)
        run_id = client.create_run(experiment, settings.name, objective_tags).info.run_id
    client.log(run_id, params=settings.base.to_params())
    client.log_text(run_id, settings.plan.to_json(), tracking.STUDY_PLAN_ARTIFACT)
    return run_id


def trial_tags(
    settings: StudySettings, trial: optuna.Trial | FrozenTrial, entry: str | None
) -> dict[str, str]:
    """Tags a trial's run starts with."""
    tags = {
        tracking.TAG_STUDY: settings.name,
        tracking.TAG_TRIAL_NUMBER: str(trial.number),
        tracking.TAG_TRIAL_STATE: TrialState.RUNNING.name,
    }
    if entry:
        tags[tracking.TAG_GRID_ENTRY] = entry
    retry_of = trial.user_attrs.get(RETRY_OF_ATTR)
    if retry_of is not None:
        tags[tracking.TAG_TRIAL_RETRY_OF] = str(retry_of)
    confirms = trial.user_attrs.get(CONFIRMS_ATTR)
    if entry is not None or confirms is not None:
        tags[tracking.TAG_REPLICATE] = str(trial.user_attrs.get(REPLICATE_ATTR, 0))
    if confirms is not None:
        tags[tracking.TAG_CONFIRMS] = str(confirms)
    return tags


def trial_choices(trial: optuna.Trial | FrozenTrial) -> dict[str, str]:
    """The trial's params and distributions as tags (MLflow params hold the full config)."""
    dists = {name: json.loads(distribution_to_json(d)) for name, d in trial.distributions.items()}
    return {
        tracking.TAG_TRIAL_PARAMS: json.dumps(trial.params, sort_keys=True),
        tracking.TAG_TRIAL_DISTRIBUTIONS: json.dumps(dists, sort_keys=True),
    }


def outcome(
    state: TrialState, values: Sequence[float] | None, reason: str | None = None
) -> tuple[dict[str, str], dict[str, float]]:
    """The tags and metrics that mirror a finished trial's outcome on its run: state, values (the
    finite ones; Optuna fails a trial of any other), reason."""
    tags = {tracking.TAG_TRIAL_STATE: state.name}
    if reason:
        tags[tracking.TAG_ERROR] = reason[: tracking.ERROR_LIMIT]
    metrics = {}
    if values is not None and all(math.isfinite(v) for v in values):
        metrics = {tracking.trial_value_name(i): v for i, v in enumerate(values)}
    return tags, metrics


def record_trial_end(run_id: str, trial: FrozenTrial, reason: str | None = None) -> None:
    """The Optuna outcome on the trial's (already ended) run: state, value, reason."""
    tags, metrics = outcome(trial.state, trial.values, reason)
    Client().log(run_id, tags=tags, metrics=metrics)


def mirror_finished(run_id: str, trial: FrozenTrial, reason: str | None) -> None:
    """A finished trial's whole mirror written again on its run (the study audit's repair): its
    params and distributions, state, values and reason, and the run's status."""
    client = Client()
    client.log(run_id, tags=trial_choices(trial))
    record_trial_end(run_id, trial, reason)
    client.end_run(run_id, RUN_STATUS[trial.state])


def restore_trial_run(
    experiment_id: str,
    parent_run_id: str,
    run_id: str | None,
    name: str,
    tags: dict[str, str],
    params: dict[str, object],
) -> str:
    """The run of a finished trial that the study's parent lacks, back (the study audit's repair):
    its run restored if it was deleted, or a new one where it has none (it failed before its run was
    made, or its run is gone for good). Returns the run's id; mirror_finished writes the rest."""
    client = Client()
    tags = {**tags, tracking.TAG_PARENT_RUN: parent_run_id}
    found = client.find_run(run_id) if run_id else None
    if found is None:
        run_id = client.create_run(experiment_id, name, tags).info.run_id
        client.log(run_id, params=params)
        return run_id
    if found.info.lifecycle_stage == tracking.LIFECYCLE_DELETED:
        client.restore_run(found.info.run_id)
    client.log(found.info.run_id, tags=tags)
    return found.info.run_id


def end_orphan(run_id: str, reason: str) -> None:
    """A trial run that mirrors no Optuna trial (a duplicate, or of a trial the study lacks) ends
    FAILED, marked so that it counts for nothing and the audit knows it was seen."""
    client = Client()
    tags = {tracking.TAG_ORPHAN: reason, tracking.TAG_TRIAL_STATE: TrialState.FAIL.name}
    client.log(run_id, tags=tags)
    client.end_run(run_id, tracking.STATUS_FAILED)


def delete_duplicate(run_id: str) -> None:
    """A second run made by one creation (the same create token as the trial's run), deleted: it
    holds nothing but its creation's tags."""
    Client().delete_run(run_id)


def mark_lost(trial: FrozenTrial, reason: str, study_name: str | None = None) -> None:
    """A trial whose worker died: its run (if it got one) ends FAILED with the reason.

    A worker killed between creating the run and recording its id on the trial leaves a trial
    that does not know its run; with study_name, such a run is found by its study and trial
    number tags (only while it still says RUNNING: a later run of the number is another story).
    """
    client = Client()
    run_id = trial.user_attrs.get(RUN_ID_ATTR)
    run_ids = [run_id] if run_id else []
    if not run_ids and study_name is not None:
        query = tracking.tag_equals(tracking.TAG_STUDY, study_name)
        query += f" and {tracking.tag_equals(tracking.TAG_TRIAL_NUMBER, str(trial.number))}"
        found = client.search_runs(client.experiment_ids(), query)
        running = TrialState.RUNNING.name
        run_ids = [r.info.run_id for r in found if r.data.tags.get(tracking.TAG_TRIAL_STATE) == running]
    for lost in run_ids:
        record_trial_end(lost, trial, reason)
        if client.get_run(lost).info.status == tracking.STATUS_RUNNING:
            client.end_run(lost, tracking.STATUS_FAILED)


def finalize(
    parent_run_id: str, study: optuna.Study, objective: Objective, state: str, note: str | None = None
) -> FrozenTrial | None:
    """Best trial, counts, plots and parameter importances on the parent run, with its description
    (note) where given; returns the best trial (None if none)."""
    client = Client()
    best = best_trial(study, objective)
    tags = {tracking.TAG_STUDY_STATE: state, **({tracking.TAG_NOTE: note} if note is not None else {})}
    metrics: dict[str, float] = {}
    for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
        metrics[tracking.trial_count_name(s.name)] = len(study.get_trials(deepcopy=False, states=(s,)))
    if best is not None:
        tags[tracking.TAG_BEST_TRIAL] = str(best.number)
        tags[tracking.TAG_BEST_RUN] = str(best.user_attrs.get(RUN_ID_ATTR, ""))
        tags.update({tracking.TAG_BEST_PARAM_PREFIX + k: str(v) for k, v in best.params.items()})
        metrics[tracking.BEST_VALUE] = best.values[0]
    client.log(parent_run_id, tags=tags, metrics=metrics)
    importances = param_importances(study)
    texts = {tracking.STUDY_TRIALS_ARTIFACT: _trials_table(study)}
    if importances:
        texts[tracking.STUDY_IMPORTANCES_ARTIFACT] = importances_csv(importances)
    if best is not None:
        summary = {"number": best.number, "values": best.values, "params": best.params, **best.user_attrs}
        texts[tracking.STUDY_BEST_ARTIFACT] = json.dumps(summary, indent=2)
    with artifact_tempdir() as tmp:  # one upload: the plots and the tables, each under its folder
        plots = Path(tmp) / tracking.PLOTS_ARTIFACT_DIR
        plots.mkdir()
        write_study_plots(study, plots, importances)
        for artifact, text in texts.items():
            path = Path(tmp) / artifact
            path.parent.mkdir(exist_ok=True)
            path.write_text(text, encoding="utf-8")
        client.log_artifacts(parent_run_id, Path(tmp))
    return best


def record_pareto_front(parent_run_id: str, study: optuna.Study) -> list[FrozenTrial]:
    """A multi-objective study's Pareto front (Optuna's best_trials), tagged on every complete trial's
    run (true/false, so a trial that left the front on a resume loses its mark) and on the parent."""
    client = Client()
    front = sorted(study.best_trials, key=lambda t: t.number)
    on_front = {t.number for t in front}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        run_id = trial.user_attrs.get(RUN_ID_ATTR)
        if run_id:
            client.set_tag(run_id, tracking.TAG_PARETO, str(trial.number in on_front).lower())
    client.set_tag(parent_run_id, tracking.TAG_PARETO_TRIALS, ",".join(str(t.number) for t in front))
    summary = [{**best_summary(t), "run_id": t.user_attrs.get(RUN_ID_ATTR)} for t in front]
    client.log_text(parent_run_id, json.dumps(summary, indent=2), tracking.STUDY_PARETO_ARTIFACT)
    return front


def record_confirmed(parent_run_id: str, confirmed: Sequence[Confirmed]) -> None:
    """--confirm-best's outcome on the parent: the best config's trial (by its mean over seeds) as a
    tag, every confirmed config's mean and interval as JSON."""
    summary = [
        {"trial": c.trial.number, "params": c.trial.params, "trials": list(c.numbers), **asdict(c.value)}
        for c in confirmed
    ]
    client = Client()
    client.log(parent_run_id, tags={tracking.TAG_CONFIRMED_BEST: confirmed[0].trial.number})
    client.log_text(parent_run_id, json.dumps(summary, indent=2), tracking.STUDY_CONFIRMED_ARTIFACT)


def end_parent(parent_run_id: str, status: str, state: str | None = None) -> None:
    """End the parent run FINISHED, KILLED or FAILED (a later resume reopens it), with the study's
    state (TAG_STUDY_STATE, 'running' while it runs) where given."""
    client = Client()
    if state:
        client.set_tag(parent_run_id, tracking.TAG_STUDY_STATE, state)
    client.end_run(parent_run_id, status)


def is_finished(run_id: str) -> bool:
    return Client().get_run(run_id).info.status == tracking.STATUS_FINISHED


def reopen_parent(parent_run_id: str, experiment: str) -> None:
    """Mark an ended parent RUNNING again while this worker works on the study (in experiment:
    the parent run read tells this process its id)."""
    client = Client()
    parent = client.get_run(parent_run_id)
    client.learn_experiment_id(experiment, parent.info.experiment_id)
    if parent.info.status != tracking.STATUS_RUNNING:
        client.reopen_run(parent_run_id)
        client.set_tag(parent_run_id, tracking.TAG_STUDY_STATE, "running")


def register_best(parent_run_id: str, best: FrozenTrial, name: str) -> str:
    """Register the best trial's model as a new version of `name`; returns 'name/version'."""
    run_id = best.user_attrs.get(RUN_ID_ATTR)
    model_uri = best.user_attrs.get(MODEL_URI_ATTR)
    if not run_id or not model_uri:
        raise TrackingError(f"best trial {best.number} has no logged model to register")
    client = Client()
    label = client.register_model(model_uri, name, run_id)  # once, however many workers conclude
    client.set_tag(parent_run_id, tracking.TAG_REGISTERED_MODEL, label)
    return label


def best_trial(study: optuna.Study, objective: Objective) -> FrozenTrial | None:
    """The complete trial with the best first value (None if none is complete)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None
    sign = 1.0 if objective.directions[0] == "minimize" else -1.0
    return min(complete, key=lambda t: sign * t.values[0])


def _trials_table(study: optuna.Study) -> str:
    """Optuna's table of the study's trials, as CSV."""
    frame = study.trials_dataframe(attrs=("number", "state", "value", "params", "user_attrs", "duration"))
    return str(frame.to_csv(index=False))


def pop_project_run() -> str | None:
    """The run `mlflow run` started for this process (MLFLOW_RUN_ID), removed from the environment
    so that trial runs do not reuse it; the study's parent run adopts it."""
    return os.environ.pop("MLFLOW_RUN_ID", None) or None


def best_summary(best: FrozenTrial | None) -> dict[str, Any]:
    if best is None:
        return {}
    return {"number": best.number, "values": best.values, "params": best.params}
