"""The only package that speaks MLflow. This module spells every name umx-tune writes there:
metrics, params, tags and artifact paths (it imports no MLflow, so anything may use it).

    server   the tracking URI and the fail-fast health check
    retry    the one retry policy for MLflow calls (all of them safe to repeat)
    client   every MLflow call umx-tune makes, retried, its refusals one-line TrackingErrors
    runs     a run: start, log, end (RunTracker, bound to its run id)
    heartbeat  a live run's heartbeat tag, and ending the runs of killed processes
    system   MLflow's system metrics (CPU, memory, disk, network, GPU) sampled while a run is open
    models   models: load, find their run

Searches quote their values with `filter_literal`, the one writer of MLflow filter literals.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from umx_tune.errors import TrackingError

if TYPE_CHECKING:
    from umx_tune.separation.speed import Measurement

DEFAULT_EXPERIMENT = "umx-tune"
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"  # MLflow's variable: the tracking server a process uses

# metric names
TRAIN_LOSS = "train_loss"
VALID_LOSS = "valid_loss"
EPOCH_SECONDS = "epoch_seconds"
# the per-epoch curves again, as one tag that each epoch's metrics batch rewrites: `report` reads a
# study's curves from the runs it lists, with no request per run and metric (curves_tag)
TAG_CURVES = "umx_tune.curves"
CURVE_METRICS = (TRAIN_LOSS, VALID_LOSS, EPOCH_SECONDS)
CURVES_IN_HISTORY = "metric-history"  # TAG_CURVES of a run whose curves outgrew a tag
LEARNING_RATE = "lr"
BEST_EPOCH = "best_epoch"
EPOCHS_TRAINED = "epochs_trained"
TRAIN_SECONDS = "train_seconds"
# what a study compares: training's CPU core-seconds (the process and its DataLoader workers) on a
# CPU, barely changed by other processes on the machine; its wall seconds on a GPU
TRAIN_COMPUTE_SECONDS = "train_compute_seconds"
# the 1-minute load average per core when the run was measured; above LOADED_MACHINE the machine
# was busy with more than this run, and the run is tagged TAG_LOADED_MACHINE
LOAD_PER_CORE = "load_per_core"
LOADED_MACHINE = 1.5
TRAIN_SAMPLES_PER_SECOND = "train_samples_per_second"
EVAL_SECONDS = "eval_seconds"
# MLflow's system metrics (tracking.system): 'system/cpu_utilization_percentage', … every interval
SYSTEM_METRICS_PREFIX = "system/"
SYSTEM_METRICS_INTERVAL = 10  # seconds between samples (MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL overrides)
SYSTEM_METRICS_SEND_EVERY = 6  # samples sent in one batch (a minute of them at the default interval)
# real-time probe: processing time / audio duration, offline and streamed (causal models only)
REALTIME_FACTOR = "rtf"
REALTIME_FACTOR_STREAMING = "rtf_streaming"
REALTIME_FACTOR_COMPUTE = "rtf_compute"  # speed.Measurement.rtf_compute: what a study compares
# streaming only: algorithmic latency and per-block compute times (ms)
LATENCY_MS = "latency_ms"
BLOCK_MS_MEDIAN = "block_ms_median"
BLOCK_MS_P99 = "block_ms_p99"
# BSSEval v4 metrics, logged plainly for the run's target and as '<estimate>_<metric>'
SEPARATION_METRICS = ("SDR", "SIR", "ISR", "SAR")
# the MDX 2021 / SDX 2023 score (umx_tune.evaluation.global_sdr), logged beside them the same two ways
GLOBAL_SDR = "global_SDR"
# a joint evaluation of several targets (a composition): its plain metrics are their mean, also
# logged as 'mean_<metric>' beside each target's
TARGETS_MEAN = "mean"

# tag names
TAG_VERSION = "umx_tune.version"
TAG_TORCH_VERSION = "torch.version"
TAG_OPENUNMIX_VERSION = "openunmix.version"
TAG_SIGNATURE = "umx_tune.signature"
TAG_DEVICE = "umx_tune.device"
TAG_LOADED_MACHINE = "umx_tune.loaded_machine"  # "true": measured while the machine was busy
# DataLoader workers the run used: its nb_workers, capped at its threads (umx_tune/cores.py)
TAG_LOADER_WORKERS = "umx_tune.loader_workers"
TAG_ERROR = "umx_tune.error"
# a live run's heartbeat (tracking.runs.start_run beats from a thread): the unix time (seconds) of
# its latest beat, and the seconds of silence after which a RUNNING run is lost (its process was
# killed) and is ended FAILED by whoever finds it (tracking.runs.reap_lost_runs)
TAG_HEARTBEAT = "umx_tune.heartbeat"
TAG_HEARTBEAT_GRACE = "umx_tune.heartbeat_grace"
HEARTBEAT_INTERVAL = 30  # seconds between a run's beats (train --heartbeat-interval; optimize: its own)
# a random token a run is created with: a create whose answer was cut finds the run it made
TAG_CREATE_TOKEN = "umx_tune.create_token"
MAX_TAG_LENGTH = 8000  # MLflow rejects longer tag values (mlflow.utils.validation.MAX_TAG_VAL_LENGTH)
ERROR_LIMIT = 5000  # characters of an error kept in TAG_ERROR (MLflow allows 8000 per tag)
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
TAG_REPLICATE = "umx_tune.replicate"  # a grid entry's replicate: 0 trains with its seed, r with seed + r
TAG_CONFIRMS = "umx_tune.confirms"  # --confirm-best: the search trial whose config this run re-runs
TAG_CONFIRMED_BEST = "umx_tune.confirmed_best"  # the parent's: the best config's trial, by its mean
# the rest of a trial's mirror of its Optuna trial, and the study parent run's summary
TAG_TRIAL_PARAMS = "umx_tune.trial_params"  # JSON: the values Optuna chose or the grid entry fixed
TAG_TRIAL_DISTRIBUTIONS = "umx_tune.trial_distributions"  # JSON: Optuna's distribution of each
TAG_TRIAL_RETRY_OF = "umx_tune.trial_retry_of"  # number of the trial a lost worker left unfinished
# a trial run the study audit found mirroring no Optuna trial (a duplicate, or of no trial): why
TAG_ORPHAN = "umx_tune.orphan"
TAG_PRUNED_EPOCH = "umx_tune.pruned_epoch"
TAG_STUDY_MODE = "umx_tune.study_mode"  # grid or search
TAG_STUDY_PLAN = "umx_tune.study_plan"  # the grid or space name (or file)
TAG_STUDY_STORAGE = "umx_tune.study_storage"  # the Optuna storage URL (password masked)
TAG_STUDY_STATE = "umx_tune.study_state"
TAG_OBJECTIVE = "umx_tune.objective"
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
STUDY_PLAN_ARTIFACT = f"{STUDY_ARTIFACT_DIR}/plan.json"  # the grid or space the study runs
STUDY_TRIALS_ARTIFACT = f"{STUDY_ARTIFACT_DIR}/trials.csv"  # Optuna's trials table
STUDY_BEST_ARTIFACT = f"{STUDY_ARTIFACT_DIR}/best.json"
STUDY_PARETO_ARTIFACT = f"{STUDY_ARTIFACT_DIR}/pareto_front.json"
STUDY_CONFIRMED_ARTIFACT = f"{STUDY_ARTIFACT_DIR}/confirmed.json"  # --confirm-best: means over seeds
# the parent's parameter importances (search/importance.py): a table (param, one column per
# evaluator) and its bar chart; the chart is written beside the study's other plots
STUDY_IMPORTANCES_ARTIFACT = f"{STUDY_ARTIFACT_DIR}/importances.csv"
IMPORTANCES_PLOT = "param_importances.png"
# MLflow's run statuses
STATUS_RUNNING = "RUNNING"
STATUS_FINISHED = "FINISHED"
STATUS_FAILED = "FAILED"
STATUS_KILLED = "KILLED"
LIFECYCLE_DELETED = "deleted"  # a deleted run's lifecycle stage (MLflow keeps it until gc)
# MLflow's own tags: the UI shows these as the run name, the nesting and the run's description
TAG_RUN_NAME = "mlflow.runName"
TAG_PARENT_RUN = "mlflow.parentRunId"
TAG_NOTE = "mlflow.note.content"

MODEL_ARTIFACT = "model"
# a run's model: an Open-Unmix model folder (umx_tune/separation/folder.py) and MLflow's MLmodel
# file naming this flavor; loading it runs no pickled code (tracking.models)
MODEL_FLAVOR = "umx_tune"
# --init-model: the model a run started from, as given (the init_model param) resolved to a URI or
# folder, and the run that logged it (where there is one)
TAG_INIT_MODEL = "umx_tune.init_model"
TAG_INIT_RUN = "umx_tune.init_run"
EVAL_ARTIFACT_DIR = "eval"  # museval's per-track JSON files
CHECKPOINT_ARTIFACT_DIR = "checkpoint"  # the training checkpoint, for --resume elsewhere
PLOTS_ARTIFACT_DIR = "plots"  # a run's loss curve; a study parent run's Optuna plots
REPORT_ARTIFACT_DIR = "report"  # the plots `umx-tune report` logs to a study's parent run
DATASET_CONTEXT = "training"  # the context of the run's dataset input
TAG_KIND = "umx_tune.kind"
KIND_EVALUATION = "evaluation"  # TAG_KIND of the runs of `umx-tune evaluate`
KIND_COMPOSITION = "composition"  # TAG_KIND of the runs of `umx-tune compose`
COMPOSE_NITER_PARAM = "niter"  # a composition's params: its Wiener EM iterations, and each target's
# source model (composed_model_param)
TAG_EVALUATED_MODEL = "umx_tune.evaluated_model"
# how a run was scored (umx_tune.evaluation.protocol): a hash and its readable field=value summary
TAG_PROTOCOL = "umx_tune.protocol"
TAG_PROTOCOL_SUMMARY = "umx_tune.protocol_summary"
# JSON {track: {metric: dB}}: the target's per-track scores (median over frames), for intervals over tracks
TAG_TRACK_SCORES = "umx_tune.track_scores"
COMPARE_ARTIFACT_DIR = "compare"  # a study parent run's `umx-tune compare` results (JSON)
# a run's listening excerpt (umx_tune.evaluation.listen): the mixture, the target's reference, the
# estimates of the target and of the residual, as FLAC files the MLflow UI plays, and a PNG of the
# reference's and estimate's spectrograms; the tag says which track and which seconds
AUDIO_ARTIFACT_DIR = "audio"
AUDIO_EXTENSION = ".flac"
EXCERPT_MIXTURE = "mixture"
EXCERPT_REFERENCE = "reference"
EXCERPT_ESTIMATE = "estimate"
SPECTROGRAMS_ARTIFACT = f"{AUDIO_ARTIFACT_DIR}/spectrograms.png"
TAG_LISTEN_EXCERPT = "umx_tune.listen_excerpt"  # JSON: {"track", "start", "frames", "requested"}
# a study parent run's page: tables, plots and players, one self-contained HTML file
STUDY_PAGE_ARTIFACT = f"{REPORT_ARTIFACT_DIR}/index.html"


def metric_name(estimate: str, metric: str) -> str:
    """Per-estimate BSSEval metric name, e.g. 'vocals_SDR', 'accompaniment_SIR'."""
    return f"{estimate}_{metric}"


def composed_model_param(target: str) -> str:
    """The param of a composition naming the model its target's network came from: 'vocals_model'."""
    return f"{target}_model"


def excerpt_artifact(part: str, estimate: str = "") -> str:
    """A listening excerpt's file: audio/mixture.flac, audio/reference_vocals.flac,
    audio/estimate_vocals.flac, audio/estimate_accompaniment.flac."""
    name = f"{part}_{estimate}" if estimate else part
    return f"{AUDIO_ARTIFACT_DIR}/{name}{AUDIO_EXTENSION}"


def trial_value_name(index: int) -> str:
    """A trial's objective value: 'trial_value' for the first objective, 'trial_value_1', … after."""
    return f"{TRIAL_VALUE}_{index}" if index else TRIAL_VALUE


def trial_count_name(state: str) -> str:
    """The study parent run's count of trials in an Optuna state: 'trials_complete', 'trials_pruned', …"""
    return f"trials_{state.lower()}"


def run_model_uri(run_id: str) -> str:
    """The URI of the model a umx-tune run logged: runs:/<id>/model."""
    return f"runs:/{run_id}/{MODEL_ARTIFACT}"


def filter_literal(value: str) -> str:
    """value as a string literal of MLflow's search filters (runs, model versions).

    Their grammar has no escapes: a value is quoted with the quote it does not hold, and one that
    holds both kinds cannot be searched for (TrackingError; a study of such a name is refused at
    creation, where its storage guard first searches for it).
    """
    if "'" in value and '"' in value:
        raise TrackingError(
            f"name {value!r} holds both ' and \", which MLflow's search filters cannot match; "
            "use a name without one of them"
        )
    quote = '"' if "'" in value else "'"
    return f"{quote}{value}{quote}"


def tag_equals(key: str, value: str) -> str:
    """An MLflow search filter for the runs whose tag key equals value: tags.`key` = 'value'."""
    return f"tags.`{key}` = {filter_literal(value)}"


def curves_tag(curves: dict[str, list[float]]) -> str:
    """TAG_CURVES' value: {metric: [value of epoch 1, 2, …]} as compact JSON (6 significant digits),
    or CURVES_IN_HISTORY when that outgrows MLflow's tag limit (a few hundred epochs)."""
    import json

    rounded = {name: [float(f"{v:.6g}") for v in values] for name, values in curves.items()}
    text = json.dumps(rounded, separators=(",", ":"))
    return text if len(text) <= MAX_TAG_LENGTH else CURVES_IN_HISTORY


def read_curves_tag(text: str | None) -> dict[str, list[tuple[int, float]]] | None:
    """{metric: [(epoch, value)]} from a TAG_CURVES value; None where the run has none (logged before
    the tag, or CURVES_IN_HISTORY): its curves are in the metric histories."""
    import json

    if not text or text == CURVES_IN_HISTORY:
        return None
    try:
        curves = json.loads(text)
        return {str(k): [(i, float(v)) for i, v in enumerate(vs, start=1)] for k, vs in curves.items()}
    except (ValueError, AttributeError, TypeError):
        return None


def realtime_values(measurement: Measurement, suffix: str = "") -> tuple[dict[str, float], dict[str, str]]:
    """(metrics, tags) of a real-time measurement; suffix (e.g. '_cpu_1t') keeps several apart."""
    metrics = {
        REALTIME_FACTOR + suffix: measurement.rtf,
        REALTIME_FACTOR_COMPUTE + suffix: measurement.rtf_compute,
    }
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
