"""`umx-tune train` (and the MLproject's `main`): one config through the pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from umx_tune import cores
from umx_tune.cli.options import EXPERIMENT, QUIET, checkpoint_dir_option, config_options, pop_config_values
from umx_tune.config import TrainConfig
from umx_tune.paths import require_writable
from umx_tune.tracking import HEARTBEAT_INTERVAL


@click.command()
@config_options()
@EXPERIMENT
@click.option("--run-name", default=None, help="MLflow run name [default: generated]")
@click.option(
    "--resume", "resume_run", metavar="RUN_ID", default=None, help="continue this run from its checkpoint"
)
@checkpoint_dir_option("where per-epoch checkpoints are kept (one folder per run id)")
@click.option(
    "--heartbeat-interval",
    type=click.IntRange(min=1),
    default=HEARTBEAT_INTERVAL,
    show_default=True,
    help="seconds between the run's heartbeats; a run silent for 3 intervals (its process killed) "
    "is ended FAILED by the next run started in its experiment",
)
@QUIET
def train(
    experiment: str,
    run_name: str | None,
    resume_run: str | None,
    checkpoint_dir: Path,
    heartbeat_interval: int,
    quiet: bool,
    **values: Any,
) -> None:
    """Train one Open-Unmix config, evaluate it and log everything to MLflow."""
    from umx_tune.tracking.runs import start_run
    from umx_tune.tracking.server import check_server

    given = pop_config_values(values)
    config = None if resume_run else TrainConfig.from_dict(given)
    cores.check_environment()
    check_server()  # fail fast: before torch, the data and the model are loaded
    require_writable(checkpoint_dir, "checkpoints")

    from umx_tune.pipeline import run_experiment
    from umx_tune.report.summary import print_summary
    from umx_tune.training.checkpoint import resume_config

    if resume_run:
        config = resume_config(resume_run, checkpoint_dir, given)
    assert config is not None
    with start_run(
        experiment=experiment,
        run_name=run_name,
        run_id=resume_run,
        system_metrics=config.system_metrics,
        heartbeat_interval=heartbeat_interval,
    ) as tracker:
        result = run_experiment(
            config, tracker, resume=bool(resume_run), checkpoint_root=checkpoint_dir, progress=not quiet
        )
    print_summary(result)
