"""run_experiment: the one pipeline every driver ends in (train, MLproject main, optimize trials).

config ─► data ─► train ─► evaluate ─► realtime probe ─► logged to MLflow
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from openunmix.model import Separator

from umx_tune import cores, tracking
from umx_tune.config import SAMPLE_RATE, TrainConfig
from umx_tune.data.dataset import Track, open_dataset
from umx_tune.evaluation import listen
from umx_tune.evaluation.listen import Excerpt
from umx_tune.evaluation.protocol import Protocol, protocol_for
from umx_tune.evaluation.scoring import EvaluationResult, evaluate_tracks, with_targets_mean
from umx_tune.paths import DEFAULT_CHECKPOINT_ROOT
from umx_tune.report.plots import loss_curve_png, spectrograms_png
from umx_tune.separation import speed
from umx_tune.separation.model import build_separator, resolve_device
from umx_tune.tracking.runs import RunTracker, artifact_tempdir
from umx_tune.training.checkpoint import StateDict, TrainState, run_checkpoint_dir
from umx_tune.training.trainer import EpochCallback, EpochResult, Trainer, init_weights


@dataclass
class ExperimentResult:
    """What a finished run produced; the same values are in its MLflow run."""

    run_id: str
    config: TrainConfig
    state: TrainState
    evaluation: EvaluationResult
    model_uri: str
    speed: speed.Measurement | None = None  # the real-time probe

    @property
    def train_seconds(self) -> float:
        return sum(self.state.epoch_seconds)


def run_experiment(
    config: TrainConfig,
    tracker: RunTracker,
    on_epoch: EpochCallback | None = None,
    *,
    resume: bool = False,
    checkpoint_root: Path = DEFAULT_CHECKPOINT_ROOT,
    progress: bool = True,
) -> ExperimentResult:
    """Train config, evaluate it on the test tracks and log everything to tracker's run.

    on_epoch is called after each epoch (Optuna reports and prunes there); what it logs goes out
    with the epoch's batch.
    resume continues from the run's last checkpoint under checkpoint_root. The run shares this
    machine's cores with the other umx-tune processes on it (umx_tune/cores.py): where they hold
    every core, it waits for one (and with progress says so).
    """
    waiting = cores.print_waiting if progress else None
    with cores.sharing(config.threads, config.nb_workers, waiting) as share:
        return _run(config, tracker, share, on_epoch, resume, checkpoint_root, progress)


def _run(
    config: TrainConfig,
    tracker: RunTracker,
    share: cores.Share,
    on_epoch: EpochCallback | None,
    resume: bool,
    checkpoint_root: Path,
    progress: bool,
) -> ExperimentResult:
    device = resolve_device(config.device)
    data = open_dataset(config, progress=progress)
    excerpt = listen.choose(data.test, config)  # an unknown listen_track fails before training
    tracker.log_config(config.replace(threads=share.threads))  # the param says what ran
    tracker.set_tags({tracking.TAG_DEVICE: str(device), tracking.TAG_LOADER_WORKERS: share.loader_workers})
    tracker.send()  # the start-of-run batch: params, versions, signature, device, the driver's tags
    tracker.log_dataset(data.root, data.digest(), name=data.root.name)
    checkpoints = run_checkpoint_dir(checkpoint_root, tracker.run_id)
    trainer = Trainer(config, data, device, checkpoints, progress, loader_workers=share.loader_workers)

    def after_epoch(result: EpochResult) -> None:
        tracker.log_metrics(_epoch_metrics(result), step=result.epoch, tags=_curves(trainer.state))
        if progress:
            _print_epoch(result, config.epochs)
        if on_epoch is not None:
            on_epoch(result)
        if not (result.stop or result.epoch >= config.epochs):
            # the epoch's batch; the last epoch's (with the scores) and a pruned epoch's go with
            # the run's end
            tracker.send(wait=False)

    init = _init_weights(config, tracker) if config.init_model and not resume else None
    training = trainer.fit(after_epoch, resume=resume, init=init)
    _log_training(tracker, training.state)
    separator = build_separator(config, training.unmix.to(device))
    protocol = protocol_for(config, data.digest(splits=("test",)))
    evaluation = evaluate_and_log(
        separator,
        data.test,
        protocol,
        device=device,
        tracker=tracker,
        progress=progress,
        excerpt=excerpt,
        workers=share.scoring_workers,
    )
    measurement = speed.probe(separator, data.test, device)
    tracker.log_realtime(measurement)
    _log_load(tracker)
    tracker.log_artifact(trainer.checkpoint_path, tracking.CHECKPOINT_ARTIFACT_DIR)
    model_uri = tracker.log_model(separator.cpu(), {config.target: config.to_params()})
    return ExperimentResult(tracker.run_id, config, training.state, evaluation, model_uri, measurement)


def _log_load(tracker: RunTracker) -> None:
    """How busy the machine was over the last minute of the run (training and the probe), per core;
    a busy machine is a tag, which `report` shows beside the run."""
    load = cores.load_per_core()
    tracker.log_metrics({tracking.LOAD_PER_CORE: load})
    if load > tracking.LOADED_MACHINE:
        tracker.set_tags({tracking.TAG_LOADED_MACHINE: "true"})


def _init_weights(config: TrainConfig, tracker: RunTracker) -> StateDict:
    """The weights of the model config.init_model names, checked against config; the run is tagged
    with that model and the run that logged it."""
    from umx_tune.tracking.models import init_tags, load_model

    loaded = load_model(config.init_model, torch.device("cpu"))
    weights = init_weights(loaded.separator, config, loaded.source)
    tracker.set_tags(init_tags(loaded.source))
    return weights


def _curves(state: TrainState) -> dict[str, str]:
    """The curves tag of every epoch so far (`report` reads it instead of the metric histories)."""
    curves = {
        tracking.TRAIN_LOSS: state.train_losses,
        tracking.VALID_LOSS: state.valid_losses,
        tracking.EPOCH_SECONDS: state.epoch_seconds,
    }
    return {tracking.TAG_CURVES: tracking.curves_tag(curves)}


def _epoch_metrics(result: EpochResult) -> dict[str, float]:
    return {
        tracking.TRAIN_LOSS: result.train_loss,
        tracking.VALID_LOSS: result.valid_loss,
        tracking.EPOCH_SECONDS: result.seconds,
        tracking.LEARNING_RATE: result.lr,
    }


def _log_training(tracker: RunTracker, state: TrainState) -> None:
    seconds = sum(state.epoch_seconds)
    tracker.log_metrics(
        {
            tracking.TRAIN_SECONDS: seconds,
            tracking.TRAIN_COMPUTE_SECONDS: sum(state.epoch_compute_seconds),
            tracking.TRAIN_SAMPLES_PER_SECOND: state.samples_seen / seconds if seconds else 0.0,
            tracking.BEST_EPOCH: state.best_epoch,
            tracking.EPOCHS_TRAINED: state.epoch,
        }
    )
    with artifact_tempdir() as tmp:
        png = loss_curve_png(state.train_losses, state.valid_losses, Path(tmp) / "loss_curve.png")
        tracker.log_artifact(png, tracking.PLOTS_ARTIFACT_DIR)


def evaluate_and_log(
    separator: Separator,
    tracks: list[Track],
    protocol: Protocol,
    *,
    device: torch.device,
    tracker: RunTracker,
    progress: bool,
    excerpt: Excerpt | None = None,
    workers: int,
) -> EvaluationResult:
    """Score the test tracks as protocol says (its evaluator and estimates; its first target is the
    model's); log per-estimate metrics, the target's plain SDR/SIR/ISR/SAR and global SDR (a
    separator of several targets: their mean), its per-track scores and the protocol (tags), the
    per-track JSONs (under eval/) and the excerpt to listen to (under audio/, from the estimates
    the scoring separated), with at most `workers` scoring processes. The pipeline and `umx-tune
    evaluate` end here."""
    target = protocol.targets[0]
    with artifact_tempdir() as tmp:
        evaluation = evaluate_tracks(
            separator,
            tracks,
            protocol.targets,
            Path(tmp),
            device=device,
            evaluator=protocol.evaluator,
            progress=progress,
            keep=excerpt,
            workers=min(len(tracks), workers),
        )
        tracker.log_artifacts(Path(tmp), tracking.EVAL_ARTIFACT_DIR)
    plain = target  # the estimate whose scores are the run's plain SDR, …: the model's target
    if len(separator.target_models) > 1:  # several targets scored jointly: their mean
        evaluation, plain = with_targets_mean(evaluation, separator.target_models), tracking.TARGETS_MEAN
    if excerpt is not None:
        assert excerpt.target == target and evaluation.excerpt is not None, "an excerpt of tracks, of target"
        track = next(t for t in tracks if t.name == excerpt.track)
        _log_excerpt(tracker, excerpt, listen.parts(excerpt, track, evaluation.excerpt))
    tracker.log_scores(evaluation.scores, plain, evaluation.seconds)
    tags = protocol.to_tags(tracking.TAG_PROTOCOL, tracking.TAG_PROTOCOL_SUMMARY)
    track_scores = track_scores_tag(evaluation, plain)
    if track_scores is not None:
        tags[tracking.TAG_TRACK_SCORES] = track_scores
    tracker.set_tags(tags)
    return evaluation


def _log_excerpt(tracker: RunTracker, excerpt: Excerpt, parts: dict[str, np.ndarray]) -> None:
    """The excerpt's FLAC files and the spectrograms of its reference and estimate (under audio/),
    and which excerpt it is (a tag); a clipped excerpt is also a warning."""
    target = excerpt.target
    if excerpt.clipped:
        print(listen.clip_warning(excerpt), file=sys.stderr)
    reference = parts[tracking.excerpt_artifact(tracking.EXCERPT_REFERENCE, target)]
    estimate = parts[tracking.excerpt_artifact(tracking.EXCERPT_ESTIMATE, target)]
    with artifact_tempdir() as tmp:
        folder = Path(tmp)
        listen.write(parts, folder)
        title = f"{target}: {excerpt.describe()}"
        spectrograms_png(
            reference, estimate, SAMPLE_RATE, folder / Path(tracking.SPECTROGRAMS_ARTIFACT).name, title
        )
        tracker.log_artifacts(folder, tracking.AUDIO_ARTIFACT_DIR)
    tracker.set_tags({tracking.TAG_LISTEN_EXCERPT: excerpt.to_tag()})


def track_scores_tag(evaluation: EvaluationResult, target: str) -> str | None:
    """The target's per-track scores as compact JSON {track: {metric: dB}}, rounded to what fits in
    one MLflow tag (None when even 2 decimals do not: the report then has no intervals over tracks)."""
    scores = {
        track: estimates[target] for track, estimates in evaluation.tracks.items() if target in estimates
    }
    for decimals in (4, 2):
        rounded = {t: {m: round(v, decimals) for m, v in s.items()} for t, s in scores.items()}
        text = json.dumps(rounded, separators=(",", ":"), sort_keys=True)
        if len(text) <= tracking.MAX_TAG_LENGTH:
            return text
    return None


def _print_epoch(result: EpochResult, epochs: int) -> None:
    print(
        f"epoch {result.epoch}/{epochs}  train_loss {result.train_loss:.4f}  "
        f"valid_loss {result.valid_loss:.4f}  ({result.seconds:.1f} s, lr {result.lr:g})",
        file=sys.stderr,
    )
