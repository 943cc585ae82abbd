"""The summary a finished run prints: losses, scores, timing and where to look."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from umx_tune import tracking
from umx_tune.report.tables import hms
from umx_tune.tracking.server import tracking_uri

if TYPE_CHECKING:
    from umx_tune.pipeline import ExperimentResult


def print_summary(result: ExperimentResult) -> None:
    """Print the run's outcome to stdout."""
    state = result.state
    lines = [
        f"run {result.run_id} finished (tracking: {tracking_uri()})",
        f"  epochs {state.epoch}, training time {hms(result.train_seconds)}, "
        f"evaluation time {hms(result.evaluation.seconds)}",
        f"  final train_loss {state.train_losses[-1]:.4f}, valid_loss {state.valid_losses[-1]:.4f} "
        f"(best {state.best_loss:.4f} at epoch {state.best_epoch})",
    ]
    lines.extend(score_lines(result.evaluation.scores))
    lines.append(f"  model: {result.model_uri}")
    lines.append(f"  look: {ui_hint()}")
    click.echo("\n".join(lines))


def score_lines(scores: dict[str, dict[str, float]]) -> list[str]:
    """One line per estimate: SDR, SIR, ISR, SAR and global SDR in dB."""
    metrics = (*tracking.SEPARATION_METRICS, tracking.GLOBAL_SDR)
    return [
        f"  {name:<14} " + "  ".join(f"{m} {values[m]:6.2f}" for m in metrics if m in values) + "  dB"
        for name, values in scores.items()
    ]


def ui_hint() -> str:
    """How to open the MLflow UI on this run's tracking store."""
    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        return f"open {uri} in a browser"
    return f"mlflow ui --backend-store-uri {uri}  (then open http://127.0.0.1:5000)"
