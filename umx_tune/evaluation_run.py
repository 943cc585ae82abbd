"""`umx-tune evaluate`: score an existing model on a dataset's test split, as a new MLflow run."""

from __future__ import annotations

from pathlib import Path

import click

from umx_tune import tracking
from umx_tune.config import TrainConfig
from umx_tune.data.dataset import open_dataset
from umx_tune.evaluate import evaluate_tracks
from umx_tune.loading import load_pretrained, load_separator, model_uri
from umx_tune.model import resolve_device
from umx_tune.summary import score_lines


def evaluate_model(
    config: TrainConfig,
    *,
    model_ref: str | None,
    pretrained: str | None,
    experiment: str,
    run_name: str | None,
    progress: bool,
) -> dict[str, dict[str, float]]:
    """Evaluate a logged model (model_ref) or a pretrained one; log and print the scores."""
    device = resolve_device(config.device)
    if pretrained:
        separator = load_pretrained(pretrained, config.target, device)
    else:
        assert model_ref is not None
        separator = load_separator(model_ref, device)
    target = next(iter(separator.target_models))
    data = open_dataset(config, progress=progress)
    source = f"pretrained:{pretrained}" if pretrained else model_uri(model_ref or "")
    with tracking.start_run(experiment=experiment, run_name=run_name or f"evaluate {source}") as tracker:
        tracker.set_tags({"umx_tune.evaluated_model": source, "umx_tune.kind": "evaluation"})
        tracker.log_dataset(data.root, data.digest(), name=data.root.name)
        with tracking.artifact_tempdir() as tmp:
            result = evaluate_tracks(
                separator,
                data.test,
                target,
                Path(tmp),
                device=device,
                evaluator=config.evaluator,
                progress=progress,
            )
            tracker.log_artifacts(Path(tmp), "eval")
        tracker.log_scores(result.scores, target, result.seconds)
        click.echo(f"run {tracker.run_id}: {source} on {len(data.test)} test tracks")
    click.echo("\n".join(score_lines(result.scores)))
    return result.scores
