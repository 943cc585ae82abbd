"""One MLflow run: start (or reopen) it, log to it, end it with the right status."""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException

import umx_tune
from umx_tune.config import TrainConfig
from umx_tune.errors import TrackingError, first_line
from umx_tune.tracking import (
    DEFAULT_EXPERIMENT,
    EVAL_SECONDS,
    MODEL_ARTIFACT,
    REALTIME_ARTIFACT_DIR,
    TAG_ERROR,
    TAG_SIGNATURE,
    metric_name,
    realtime_values,
)
from umx_tune.tracking.retry import survives_cut_connections
from umx_tune.tracking.server import check_server

if TYPE_CHECKING:
    from umx_tune.separation.speed import Measurement


def version_tags() -> dict[str, str]:
    """umx-tune, torch and openunmix versions, as run tags."""
    import openunmix
    import torch

    return {
        "umx_tune.version": umx_tune.__version__,
        "torch.version": torch.__version__,
        "openunmix.version": getattr(openunmix, "__version__", "1.3.0"),
    }


class RunTracker:
    """Logs one umx-tune run to the active MLflow run. Created by `start_run`.

    Every call but the asynchronous metrics survives a connection cut for a few seconds; the model
    too (a retry after a cut may leave one unused LoggedModel behind).
    """

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id

    @survives_cut_connections
    def log_config(self, config: TrainConfig) -> None:
        """Params (TrainConfig names) and tags.

        Params already in the run are kept: MLflow params are immutable, `mlflow run` logs the
        MLproject parameters itself (shell-quoted), and a resumed run has them from its start.
        """
        logged = mlflow.get_run(self.run_id).data.params
        mlflow.log_params({k: v for k, v in config.to_params().items() if k not in logged})
        mlflow.set_tags({**version_tags(), TAG_SIGNATURE: config.signature()})

    @survives_cut_connections
    def set_tags(self, tags: dict[str, Any]) -> None:
        mlflow.set_tags({k: str(v) for k, v in tags.items()})

    @survives_cut_connections
    def log_dataset(self, root: Path, digest: str, name: str) -> None:
        """The dataset as an MLflow input (context 'training') with its digest."""
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset

        with warnings.catch_warnings():  # MLflow warns that two registered local sources both match
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(str(root))
        dataset = MetaDataset(source=source, name=name, digest=digest)  # type: ignore[abstract]
        mlflow.log_input(dataset, context="training")

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Metrics, logged asynchronously so that logging never waits on the server."""
        mlflow.log_metrics(metrics, step=step, synchronous=False)

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

    @survives_cut_connections
    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        mlflow.log_artifact(str(path), artifact_path=artifact_path)

    @survives_cut_connections
    def log_artifacts(self, folder: Path, artifact_path: str) -> None:
        mlflow.log_artifacts(str(folder), artifact_path=artifact_path)

    @survives_cut_connections
    def log_text(self, text: str, artifact_file: str) -> None:
        mlflow.log_text(text, artifact_file)

    @survives_cut_connections
    def log_model(self, model: Any) -> str:
        """The separator in MLflow's pytorch flavor; returns its model URI."""
        import openunmix
        import torch

        requirements = [
            f"torch=={torch.__version__.split('+')[0]}",
            f"openunmix=={getattr(openunmix, '__version__', '1.3.0')}",
            "torchaudio",
        ]
        # "pickle": torch.export (pt2) cannot trace the STFT/LSTM separator; weights + JSON config
        # are also in the run's checkpoint/ artifact
        pytorch_logger = logging.getLogger("mlflow.pytorch")
        level = pytorch_logger.level
        pytorch_logger.setLevel(logging.ERROR)  # silence the pickle advisory on every run
        try:
            info = mlflow.pytorch.log_model(
                model, name=MODEL_ARTIFACT, pip_requirements=requirements, serialization_format="pickle"
            )
        finally:
            pytorch_logger.setLevel(level)
        return str(info.model_uri)


@contextmanager
def start_run(
    *,
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str | None = None,
    run_id: str | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    killed_on: tuple[type[BaseException], ...] = (),
) -> Iterator[RunTracker]:
    """Start (or, with run_id, reopen) a run; it ends FINISHED, FAILED on error, KILLED on Ctrl-C.

    Exceptions in killed_on also end it KILLED, their message as the error tag (a pruned trial).
    Inside `mlflow run` (MLFLOW_RUN_ID set) the project's run is used.
    """
    check_server()
    run_id = run_id or os.environ.get("MLFLOW_RUN_ID") or None
    try:
        if run_id is None:
            mlflow.set_experiment(experiment)
        active = mlflow.start_run(
            run_id=run_id,
            run_name=run_name,
            parent_run_id=parent_run_id,
            nested=bool(parent_run_id),
            tags=tags,
        )
    except MlflowException as err:
        raise TrackingError(f"MLflow refused to start the run: {first_line(err)}") from None
    try:
        yield RunTracker(active.info.run_id)
    except KeyboardInterrupt:
        _end(RunStatus.KILLED, "interrupted")
        raise
    except killed_on as err:
        _end(RunStatus.KILLED, first_line(err))
        raise
    except BaseException as err:
        _end(RunStatus.FAILED, f"{type(err).__name__}: {first_line(err)}")
        raise
    else:
        _end(RunStatus.FINISHED, None)


@survives_cut_connections
def _end(status: int, error: str | None) -> None:
    """Flush async logging, record the error (if any) and end the run with the given status."""
    try:
        mlflow.flush_async_logging()
        if error:
            mlflow.set_tag(TAG_ERROR, error[:5000])
    finally:
        mlflow.end_run(RunStatus.to_string(status))


def artifact_tempdir() -> tempfile.TemporaryDirectory:
    """A temporary folder for files that are logged as artifacts and then discarded."""
    return tempfile.TemporaryDirectory(prefix="umx-tune-")


def log_realtime_to_run(run_id: str, measurements: list[Measurement], report: str) -> None:
    """Add measurements (metrics suffixed '_<device>_<threads>t') and the JSON report to a run.

    The run is written through the client, so a finished run stays finished.
    """
    from mlflow.entities import Metric, RunTag

    client = mlflow.MlflowClient()
    now = int(time.time() * 1000)
    metrics: dict[str, float] = {}
    tags: dict[str, str] = {}
    for m in measurements:
        # 'cuda:0' -> 'cuda0': MLflow names allow letters, digits, '_', '-', '.', ' ', '/'
        suffix = "_" + re.sub(r"[^0-9A-Za-z]+", "", m.device) + f"_{m.threads}t"
        values, labels = realtime_values(m, suffix)
        metrics.update(values)
        tags.update(labels)
    try:
        client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
            tags=[RunTag(k, v) for k, v in tags.items()],
        )
        client.log_text(run_id, report, f"{REALTIME_ARTIFACT_DIR}/realtime-{now}.json")
    except MlflowException as err:
        raise TrackingError(f"cannot log to run {run_id}: {first_line(err)}") from None
