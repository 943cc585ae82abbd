"""The only module that speaks MLflow for runs: params, metrics, tags, artifacts and the model.

Every metric, param and tag name umx-tune writes is spelled here.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import mlflow
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException

import umx_tune
from umx_tune.config import TrainConfig
from umx_tune.errors import ModelError, TrackingError

if TYPE_CHECKING:
    from umx_tune.realtime import Measurement

DEFAULT_EXPERIMENT = "umx-tune"

# metric names
TRAIN_LOSS = "train_loss"
VALID_LOSS = "valid_loss"
EPOCH_SECONDS = "epoch_seconds"
LEARNING_RATE = "lr"
BEST_EPOCH = "best_epoch"
EPOCHS_TRAINED = "epochs_trained"
TRAIN_SECONDS = "train_seconds"
TRAIN_SAMPLES_PER_SECOND = "train_samples_per_second"
EVAL_SECONDS = "eval_seconds"
EVAL_REALTIME_FACTOR = "eval_rtf"
# real-time probe: processing time / audio duration, offline and streamed (causal models only)
REALTIME_FACTOR = "rtf"
REALTIME_FACTOR_STREAMING = "rtf_streaming"
# streaming only: algorithmic latency and per-block compute times (ms)
LATENCY_MS = "latency_ms"
BLOCK_MS_MEDIAN = "block_ms_median"
BLOCK_MS_P99 = "block_ms_p99"
# BSSEval v4 metrics, logged plainly for the run's target and as '<estimate>_<metric>'
SEPARATION_METRICS = ("SDR", "SIR", "ISR", "SAR")

# tag names
TAG_PREFIX = "umx_tune."
TAG_SIGNATURE = "umx_tune.signature"
TAG_DEVICE = "umx_tune.device"
TAG_ERROR = "umx_tune.error"
# what the real-time factors were measured on: device, torch threads, the processor's name
TAG_RTF_DEVICE = "umx_tune.rtf_device"
TAG_RTF_THREADS = "umx_tune.rtf_threads"
TAG_RTF_PROCESSOR = "umx_tune.rtf_processor"
REALTIME_ARTIFACT_DIR = "realtime"
# a study is a parent run tagged with TAG_STUDY; each trial is a nested child run carrying all four
TAG_STUDY = "umx_tune.study"
TAG_TRIAL_NUMBER = "umx_tune.trial_number"
TAG_TRIAL_STATE = "umx_tune.trial_state"
TAG_GRID_ENTRY = "umx_tune.grid_entry"
# the rest of a trial's mirror of its Optuna trial, and the study parent run's summary
TAG_TRIAL_PARAMS = "umx_tune.trial_params"  # JSON: the values Optuna chose or the grid entry fixed
TAG_TRIAL_DISTRIBUTIONS = "umx_tune.trial_distributions"  # JSON: Optuna's distribution of each
TAG_TRIAL_RETRY_OF = "umx_tune.trial_retry_of"  # number of the trial a lost worker left unfinished
TAG_PRUNED_EPOCH = "umx_tune.pruned_epoch"
TAG_STUDY_MODE = "umx_tune.study_mode"  # grid or search
TAG_STUDY_PLAN = "umx_tune.study_plan"  # the grid or space name (or file)
TAG_STUDY_STORAGE = "umx_tune.study_storage"  # the Optuna storage URL (password masked)
TAG_STUDY_STATE = "umx_tune.study_state"
TAG_OBJECTIVE = "umx_tune.objective"
TAG_DIRECTION = "umx_tune.direction"
TAG_SAMPLER = "umx_tune.sampler"
TAG_PRUNER = "umx_tune.pruner"
TAG_BEST_TRIAL = "umx_tune.best_trial_number"
TAG_BEST_RUN = "umx_tune.best_run_id"
TAG_BEST_PARAM_PREFIX = "umx_tune.best."  # + parameter name, one tag per best-trial param
TAG_REGISTERED_MODEL = "umx_tune.registered_model"  # name/version --register-best created
# multi-objective studies: "true"/"false" on each complete trial's run, the front's numbers on the parent
TAG_PARETO = "umx_tune.pareto_front"
TAG_PARETO_TRIALS = "umx_tune.pareto_trials"
# a trial's objective value(s) and its per-epoch reports to Optuna (step = epoch)
TRIAL_VALUE = "trial_value"
TRIAL_INTERMEDIATE = "trial_intermediate_value"
BEST_VALUE = "best_value"
STUDY_ARTIFACT_DIR = "study"
# MLflow's own tags: the UI shows these as the run name, the nesting and the run's description
TAG_RUN_NAME = "mlflow.runName"
TAG_PARENT_RUN = "mlflow.parentRunId"
TAG_NOTE = "mlflow.note.content"

MODEL_ARTIFACT = "model"


def metric_name(estimate: str, metric: str) -> str:
    """Per-estimate BSSEval metric name, e.g. 'vocals_SDR', 'accompaniment_SIR'."""
    return f"{estimate}_{metric}"


def realtime_values(measurement: Measurement, suffix: str = "") -> tuple[dict[str, float], dict[str, str]]:
    """(metrics, tags) of a real-time measurement; suffix (e.g. '_cpu_1t') keeps several apart."""
    metrics = {REALTIME_FACTOR + suffix: measurement.rtf}
    stream = measurement.stream
    if stream is not None:
        # float32 weights keep the plain names; other precisions say theirs, e.g. 'rtf_streaming_float16'
        precision = "" if stream.precision == "float32" else f"_{stream.precision}"
        metrics[REALTIME_FACTOR_STREAMING + precision + suffix] = stream.rtf
        metrics[LATENCY_MS + suffix] = stream.latency_ms
        metrics[BLOCK_MS_MEDIAN + precision + suffix] = stream.block_ms_median
        metrics[BLOCK_MS_P99 + precision + suffix] = stream.block_ms_p99
    tags = {
        TAG_RTF_DEVICE + suffix: measurement.device,
        TAG_RTF_THREADS + suffix: str(measurement.threads),
        TAG_RTF_PROCESSOR + suffix: measurement.processor,
    }
    return metrics, tags


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
        raise TrackingError(f"cannot log to run {run_id}: {_first_line(err)}") from None


def model_run_id(uri: str) -> str:
    """The run that logged a model URI (runs:/, models:/, …); ModelError if it names none."""
    from mlflow.models import get_model_info

    try:
        run_id = get_model_info(uri).run_id
    except (MlflowException, OSError) as err:
        raise ModelError(f"cannot find the run of model {uri!r}: {_first_line(err)}") from None
    if not run_id:
        raise ModelError(f"model {uri!r} was not logged by a run; --log needs one")
    return str(run_id)


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else MLflow's local default (sqlite:///mlflow.db here)."""
    return mlflow.get_tracking_uri()


def check_server(uri: str | None = None, timeout: float = 10.0) -> None:
    """Fail fast (TrackingError) when an http(s) tracking server does not answer /health."""
    uri = uri or tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
            if response.status == 200:
                return
            reason = f"HTTP {response.status}"
    except urllib.error.HTTPError as err:
        reason = f"HTTP {err.code}"
    except (urllib.error.URLError, OSError) as err:
        reason = str(getattr(err, "reason", err))
    raise TrackingError(f"MLflow tracking server {uri} does not answer ({reason}); is it running?")


def version_tags() -> dict[str, str]:
    """umx-tune, torch and openunmix versions, as run tags."""
    import openunmix
    import torch

    return {
        "umx_tune.version": umx_tune.__version__,
        "torch.version": torch.__version__,
        "openunmix.version": getattr(openunmix, "__version__", "1.3.0"),
    }


_P = ParamSpec("_P")
_R = TypeVar("_R")
CUT_CONNECTION_RETRIES = 5  # waits of 1, 2, 4, 8 s: a server that drops out for ~15 s loses nothing


def _connection_cut(err: MlflowException) -> bool:
    """Whether err is a request whose connection broke: refused, reset, or cut mid-response."""
    import requests

    cause = err.__cause__ or err.__context__
    return isinstance(cause, requests.exceptions.ConnectionError | requests.exceptions.ChunkedEncodingError)


def survives_cut_connections(call: Callable[_P, _R]) -> Callable[_P, _R]:
    """Retry call when its connection to the server broke. MLflow retries a refused connection
    itself, but not one cut while the answer was arriving (a server restarting, a proxy dropping),
    which would otherwise fail a whole run. For calls that can safely run twice."""

    @wraps(call)
    def retrying(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        attempt = 0
        while True:
            try:
                return call(*args, **kwargs)
            except MlflowException as err:
                attempt += 1
                if attempt == CUT_CONNECTION_RETRIES or not _connection_cut(err):
                    raise
                time.sleep(2 ** (attempt - 1))

    return retrying


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
        raise TrackingError(f"MLflow refused to start the run: {_first_line(err)}") from None
    try:
        yield RunTracker(active.info.run_id)
    except KeyboardInterrupt:
        _end(RunStatus.KILLED, "interrupted")
        raise
    except killed_on as err:
        _end(RunStatus.KILLED, _first_line(err))
        raise
    except BaseException as err:
        _end(RunStatus.FAILED, f"{type(err).__name__}: {_first_line(err)}")
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


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def artifact_tempdir() -> tempfile.TemporaryDirectory:
    """A temporary folder for files that are logged as artifacts and then discarded."""
    return tempfile.TemporaryDirectory(prefix="umx-tune-")
