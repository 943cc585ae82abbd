"""One MLflow run: start (or reopen) it, log to it, end it with the right status.

The run is named by its id in every call (tracking.client); MLflow's fluent API and its hidden
active run are not used, so an end that is tried again can never start a second run.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import umx_tune
from umx_tune.config import TrainConfig
from umx_tune.errors import first_line
from umx_tune.signals import interruption
from umx_tune.tracking import (
    DATASET_CONTEXT,
    DEFAULT_EXPERIMENT,
    ERROR_LIMIT,
    EVAL_SECONDS,
    HEARTBEAT_INTERVAL,
    REALTIME_ARTIFACT_DIR,
    STATUS_FAILED,
    STATUS_FINISHED,
    STATUS_KILLED,
    TAG_ERROR,
    TAG_OPENUNMIX_VERSION,
    TAG_PARENT_RUN,
    TAG_SIGNATURE,
    TAG_TORCH_VERSION,
    TAG_VERSION,
    heartbeat,
    metric_name,
    realtime_values,
)
from umx_tune.tracking.client import Client, Run
from umx_tune.tracking.server import check_server
from umx_tune.tracking.system import system_metrics as monitor_system

if TYPE_CHECKING:
    from openunmix.model import Separator

    from umx_tune.separation.speed import Measurement


def version_tags() -> dict[str, str]:
    """umx-tune, torch and openunmix versions, as run tags."""
    import openunmix
    import torch

    return {
        TAG_VERSION: umx_tune.__version__,
        TAG_TORCH_VERSION: torch.__version__,
        TAG_OPENUNMIX_VERSION: getattr(openunmix, "__version__", "1.3.0"),
    }


class RunTracker:
    """Logs one umx-tune run, by its id. Created by `start_run`.

    What one moment logs goes out in one batch: params, tags and metrics (of any steps) are staged
    and sent together by `send` (the pipeline sends at the run's start and after each epoch but the
    last, in the background) and by the run's end (the last epoch's values, the scores, linked to
    the model `log_model` made, and what the caller adds: a trial's outcome); each batch carries the
    run's heartbeat. Every call is retried by the one policy; batches sent in the background are
    waited for by `flush`.
    """

    def __init__(self, client: Client, run: Run, beat: heartbeat.Beat) -> None:
        self._client = client
        self._run = run
        self._beat = beat
        self.run_id: str = run.info.run_id
        self._pending: list[Callable[[], None]] = []
        self._params: dict[str, Any] = {}
        self._tags: dict[str, Any] = {}
        self._metrics: dict[int, dict[str, float]] = {}  # step -> staged metrics
        self._model_id: str | None = None  # the run's LoggedModel, once log_model made it

    def log_config(self, config: TrainConfig) -> None:
        """Params (TrainConfig names) and tags, staged.

        Params already in the run when it was opened are kept: MLflow params are immutable, `mlflow
        run` logs the MLproject parameters itself (shell-quoted), and a resumed run has them from
        its start.
        """
        logged = self._run.data.params
        self.log_params({k: v for k, v in config.to_params().items() if k not in logged})
        self.set_tags({**version_tags(), TAG_SIGNATURE: config.signature()})

    def set_tags(self, tags: dict[str, Any]) -> None:
        """Tags, staged for the next batch."""
        self._tags.update(tags)

    def log_params(self, params: dict[str, Any]) -> None:
        """Params, staged for the next batch (a training run's are log_config's)."""
        self._params.update(params)

    def register_model(self, model_uri: str, name: str) -> str:
        """This run's model as a new version of registered model `name`; returns 'name/version'."""
        return self._client.register_model(model_uri, name, self.run_id)

    def log_dataset(self, root: Path, digest: str, name: str) -> None:
        """The dataset as an MLflow input (context 'training') with its digest."""
        self._client.log_dataset(self.run_id, root, name, digest, DATASET_CONTEXT)

    def log_metrics(
        self, metrics: dict[str, float], step: int | None = None, tags: dict[str, Any] | None = None
    ) -> None:
        """Metrics at step (0 where None) and tags, staged."""
        self._metrics.setdefault(step or 0, {}).update(metrics)
        self._tags.update(tags or {})

    def send(self, wait: bool = True) -> None:
        """What is staged, with a heartbeat, as one batch: waited for, or (wait=False, no params) in
        the background, so that training never waits on the server; once the run has a model, its
        step-0 metrics are linked to it. What a failed batch held is not staged again (its error
        ends the run)."""
        if not (self._params or self._tags or self._metrics):
            return
        params, steps = self._params, self._metrics
        tags = {**self._tags, **self._beat.tags()}
        self._params, self._tags, self._metrics = {}, {}, {}
        if wait or params:
            self.flush()  # a batch waited for lands after those sent before it
            self._client.log_steps(self.run_id, steps, params=params, tags=tags, model_id=self._model_id)
        else:
            self._pending.append(self._client.log_soon(self.run_id, steps, tags))

    def flush(self) -> None:
        """Wait until every batch sent in the background is stored (one lost is sent again)."""
        while self._pending:
            self._pending.pop(0)()

    def log_realtime(self, measurement: Measurement) -> None:
        """The pipeline's real-time probe: plain `rtf`, `rtf_streaming`, … and what it ran on."""
        metrics, tags = realtime_values(measurement)
        self.log_metrics(metrics)
        self.set_tags(tags)

    def log_scores(self, scores: dict[str, dict[str, float]], target: str, seconds: float) -> None:
        """BSSEval aggregates: '<estimate>_<metric>' for every estimate, plain 'SDR' etc. for target."""
        metrics = {metric_name(name, m): v for name, values in scores.items() for m, v in values.items()}
        metrics.update(scores.get(target, {}))
        metrics[EVAL_SECONDS] = seconds
        self.log_metrics(metrics)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self._client.log_artifact(self.run_id, path, artifact_path)

    def log_artifacts(self, folder: Path, artifact_path: str) -> None:
        self._client.log_artifacts(self.run_id, folder, artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self._client.log_text(self.run_id, text, artifact_file)

    def log_model(self, separator: Separator, args: Mapping[str, Mapping[str, Any]]) -> str:
        """The separator as the run's model: its Open-Unmix folder (args: each target's training
        options, for `<target>.json`) and the MLmodel file; returns its model URI.

        What is staged (the last epoch's values, the scores) goes out with the run's next batch,
        its end's as a rule, and from now on step-0 metrics (the scores) are linked to the model.
        """
        from umx_tune.separation.folder import write_model_folder

        model_uri, self._model_id = self._client.log_model(
            self._run,
            lambda folder: write_model_folder(separator, folder, args),
            {"format": "openunmix-folder", "targets": list(separator.target_models)},
        )
        return model_uri

    def end(self, status: str, error: str | None) -> None:
        """Send what is staged with the error (if any), and end the run with status.

        Each step is retried on its own and safe to repeat; the run is ended even when an earlier
        step failed, so no retry ever leaves it RUNNING or touches another run.
        """
        try:
            if error:
                self.set_tags({TAG_ERROR: error[:ERROR_LIMIT]})
            self.send()
        finally:
            self._client.end_run(self.run_id, status)


def _open_run(
    client: Client,
    experiment: str,
    run_name: str | None,
    run_id: str | None,
    tags: dict[str, Any],
    interval: int,
) -> Run:
    """Reopen run_id (RUNNING again, tags added), or create a new run in the experiment (ending
    the experiment's runs whose process was killed first: searched for at most once per grace of
    a run beating every `interval` s, since none is lost sooner)."""
    if run_id is None:
        experiment_id = client.experiment_id(experiment)
        heartbeat.reap_lost_runs(client, experiment_id, every=heartbeat.grace(interval))
        return client.create_run(experiment_id, run_name, tags)
    client.reopen_run(run_id, run_name)
    client.log(run_id, tags=tags)
    return client.get_run(run_id)


@contextmanager
def start_run(
    *,
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str | None = None,
    run_id: str | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    killed_on: tuple[type[BaseException], ...] = (),
    system_metrics: bool = False,
    heartbeat_interval: int = HEARTBEAT_INTERVAL,
) -> Iterator[RunTracker]:
    """Start (or, with run_id, reopen) a run; it ends FINISHED, FAILED on error, KILLED on Ctrl-C
    or SIGTERM (umx_tune.signals), and beats its heartbeat while open (tracking.heartbeat).

    A parent_run_id nests the new run under it. Exceptions in killed_on also end it KILLED, their
    message as the error tag (a pruned trial). Inside `mlflow run` (MLFLOW_RUN_ID set) the
    project's run is used. With system_metrics, MLflow's system metrics are sampled into the run
    while it is open (tracking.system). A server that answered this process before and is down
    now (restarting) is waited for, for a bounded time (tracking.server.check_server).
    """
    check_server()
    client = Client()
    run_id = run_id or os.environ.get("MLFLOW_RUN_ID") or None
    beat = heartbeat.Beat(heartbeat_interval)
    opening: dict[str, Any] = {
        **(tags or {}),
        **({TAG_PARENT_RUN: parent_run_id} if parent_run_id else {}),
        **beat.first_tags(),  # the first beat rides on the run's creation
    }
    run = _open_run(client, experiment, run_name, run_id, opening, heartbeat_interval)
    tracker = RunTracker(client, run, beat)
    try:
        with (
            heartbeat.beating(client, tracker.run_id, beat),
            monitor_system(tracker.run_id, enabled=system_metrics, resume=run_id is not None),
        ):
            yield tracker
    except KeyboardInterrupt as err:
        tracker.end(STATUS_KILLED, interruption(err))
        raise
    except killed_on as err:
        tracker.end(STATUS_KILLED, first_line(err))
        raise
    except BaseException as err:
        tracker.end(STATUS_FAILED, f"{type(err).__name__}: {first_line(err)}")
        raise
    else:
        tracker.end(STATUS_FINISHED, None)


def artifact_tempdir() -> tempfile.TemporaryDirectory:
    """A temporary folder for files that are logged as artifacts and then discarded."""
    return tempfile.TemporaryDirectory(prefix="umx-tune-")


def log_realtime_to_run(run_id: str, measurements: list[Measurement], report: str) -> None:
    """Add measurements (metrics suffixed '_<device>_<threads>t') and the JSON report to a run.

    Only metrics, tags and an artifact are added: a finished run stays finished.
    """
    client = Client()
    metrics: dict[str, float] = {}
    tags: dict[str, str] = {}
    for m in measurements:
        # 'cuda:0' -> 'cuda0': MLflow names allow letters, digits, '_', '-', '.', ' ', '/'
        suffix = "_" + re.sub(r"[^0-9A-Za-z]+", "", m.device) + f"_{m.threads}t"
        values, labels = realtime_values(m, suffix)
        metrics.update(values)
        tags.update(labels)
    client.log(run_id, metrics=metrics, tags=tags)
    client.log_text(run_id, report, f"{REALTIME_ARTIFACT_DIR}/realtime-{int(time.time() * 1000)}.json")
