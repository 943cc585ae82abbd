"""A small grid study written straight into a real MLflow server, without training.

The runs look like `umx-tune optimize` leaves them: a parent run tagged with the study name and
nested trial runs with every TrainConfig param, per-epoch losses (step = epoch), timing, scores and
the study/trial/grid-entry tags. The numbers are the original study's (docs/study.md), so the report's
tables can be compared with known values.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from umx_tune import tracking
from umx_tune.config import TrainConfig


@dataclass
class Trial:
    """One trial to write: its params, per-epoch train losses and final metrics."""

    run_name: str
    number: int
    params: dict[str, object]
    train_losses: list[float] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    grid_entry: str | None = None
    state: str = "COMPLETE"
    status: str = "FINISHED"
    loaded: bool = False  # measured while the machine was busy (tracking.TAG_LOADED_MACHINE)


def _grid_trial(number: int, entry: str, sizes: tuple[int, int, int, int], final_loss: float) -> Trial:
    batch, hidden, samples, epochs = sizes
    # a falling loss curve that ends at the study's final loss
    losses = [round(final_loss * (1 + 0.5 * (epochs - e)), 4) for e in range(1, epochs + 1)]
    params = {"batch_size": batch, "nb_workers": 4, "hidden_size": hidden}
    params.update({"samples_per_track": samples, "epochs": epochs})
    return Trial(entry, number, params, losses, grid_entry=entry)


def _scores(sdr: float, sir: float, isr: float, sar: float, rtf: float) -> dict[str, float]:
    metrics = {"SDR": sdr, "SIR": sir, "ISR": isr, "SAR": sar, tracking.REALTIME_FACTOR: rtf}
    metrics.update({tracking.metric_name("vocals", m): v for m, v in metrics.items() if m != "rtf"})
    metrics.update({tracking.metric_name("accompaniment", "SDR"): sdr + 6.0})
    return metrics


def study_trials() -> list[Trial]:
    """The grid of docs/study.md (trial numbers in the order a worker might have run them), a causal
    search trial with real-time numbers, a trial that has only just started and a pruned one."""
    trials = [
        _grid_trial(2, "open-unmix", (8, 256, 16, 1), 9.536),
        _grid_trial(4, "open-unmix2", (4, 256, 16, 1), 8.55),
        _grid_trial(0, "open-unmix3", (16, 512, 16, 1), 11.2),
        _grid_trial(1, "open-unmix4", (16, 512, 16, 4), 3.2),
        _grid_trial(3, "open-unmix5", (32, 512, 32, 5), 2.26),
        _grid_trial(5, "open-unmix6", (32, 512, 32, 1), 9.56),
    ]
    seconds = (470, 463, 462, 1869, 4680, 1200)
    scores = [
        _scores(2.326, 3.028, 6.588, 5.347, 0.41),
        _scores(2.746, 2.954, 7.706, 6.288, 0.43),
        _scores(1.934, 2.849, 5.579, 4.07, 0.62),
        _scores(2.767, 3.052, 9.831, 7.201, 0.61),
        _scores(2.898, 3.628, 9.272, 6.63, 0.64),
        {},  # like the original open-unmix6: trained, never evaluated
    ]
    for trial, secs, score in zip(trials, seconds, scores, strict=True):
        trial.metrics = {tracking.TRAIN_SECONDS: float(secs), **score}
    trials[-1].state, trials[-1].status = "FAIL", "FAILED"
    trials[3].loaded = True  # open-unmix4, as the seed grid's run with another process beside it
    causal = Trial(
        "trial-6", 6, {"hidden_size": 256, "unidirectional": True, "epochs": 2}, [6.1, 5.2], grid_entry=None
    )
    causal.metrics = {tracking.TRAIN_SECONDS: 300.0, **_scores(1.5, 2.0, 5.0, 4.0, 0.12)}
    causal.metrics[tracking.REALTIME_FACTOR_STREAMING] = 0.35
    started = Trial("trial-7", 7, {"hidden_size": 128}, state="RUNNING", status="RUNNING")
    # pruned after 3 epochs: losses and epoch times, but no train_seconds and no scores
    pruned = Trial("trial-8", 8, {"unidirectional": True}, [7.0, 6.8, 6.7], state="PRUNED", status="KILLED")
    return [*trials, causal, started, pruned]


def _curves(trial: Trial) -> dict[str, list[float]]:
    """Per-epoch train/valid loss and epoch time."""
    total = trial.metrics.get(tracking.TRAIN_SECONDS, 60.0 * len(trial.train_losses))
    epoch_seconds = total / max(1, len(trial.train_losses))
    return {
        tracking.TRAIN_LOSS: trial.train_losses,
        tracking.VALID_LOSS: [round(loss * 1.1, 4) for loss in trial.train_losses],
        tracking.EPOCH_SECONDS: [epoch_seconds] * len(trial.train_losses),
    }


def _batch(trial: Trial, now: int) -> tuple[list[Metric], list[Param]]:
    """The curves (step = epoch), final metrics, all params."""
    config = TrainConfig.from_dict(trial.params)
    metrics = [
        Metric(name, value, now + epoch, epoch)
        for name, values in _curves(trial).items()
        for epoch, value in enumerate(values, start=1)
    ]
    metrics += [Metric(k, v, now + 100, 0) for k, v in trial.metrics.items()]
    params = [Param(k, str(v)) for k, v in config.to_params().items()]
    return metrics, params


def write_study(
    client: MlflowClient, experiment: str, study: str, copies: int = 1
) -> tuple[str, dict[str, str]]:
    """Write the study (its trials `copies` times: replicates); returns the parent run id and
    {trial run name: run id} (of the last copy)."""
    experiment_id = client.create_experiment(experiment)
    now = int(time.time() * 1000)
    parent = client.create_run(experiment_id, now, tags={tracking.TAG_STUDY: study}, run_name=study)
    ids = {}
    for trial in [t for _ in range(copies) for t in study_trials()]:
        tags = {
            tracking.TAG_STUDY: study,
            tracking.TAG_PARENT_RUN: parent.info.run_id,
            tracking.TAG_TRIAL_NUMBER: str(trial.number),
            tracking.TAG_TRIAL_STATE: trial.state,
        }
        if trial.grid_entry:
            tags[tracking.TAG_GRID_ENTRY] = trial.grid_entry
        if trial.loaded:
            tags[tracking.TAG_LOADED_MACHINE] = "true"
        if trial.train_losses:  # as the pipeline tags each epoch
            tags[tracking.TAG_CURVES] = tracking.curves_tag(_curves(trial))
        run = client.create_run(experiment_id, now + trial.number, tags=tags, run_name=trial.run_name)
        metrics, params = _batch(trial, now)
        client.log_batch(run.info.run_id, metrics=metrics, params=params)
        if trial.status != "RUNNING":
            client.set_terminated(run.info.run_id, trial.status)
        ids[trial.run_name] = run.info.run_id
    client.set_terminated(parent.info.run_id, "FINISHED")
    return parent.info.run_id, ids
