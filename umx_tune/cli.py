"""`umx-tune`: the command-line entry point.

Every user error is one line on stderr and exit status 2; Ctrl-C exits 130.
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path
from typing import Any

import click

from umx_tune.cli_options import checkpoint_dir_option, config_options, pop_config_values, precision_option
from umx_tune.config import TrainConfig
from umx_tune.errors import UmxTuneError

QUIET = click.option("--quiet", is_flag=True, help="no progress output")
EXPERIMENT = click.option(
    "--experiment", default="umx-tune", show_default=True, help="MLflow experiment name"
)


class LazyGroup(click.Group):
    """A group whose larger commands are imported only when invoked (or listed by --help).

    Their modules pull in torch, MLflow and Optuna; `umx-tune train` should not pay for them.
    """

    lazy = {
        "optimize": "umx_tune.search.command:optimize",
        "realtime": "umx_tune.realtime_command:realtime",
        "report": "umx_tune.report_command:report",
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            module, attribute = self.lazy[name].split(":")
            command: click.Command = getattr(importlib.import_module(module), attribute)
            return command
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="umx-tune")
def cli() -> None:
    """Train, evaluate and tune Open-Unmix models; every run is tracked in MLflow."""


@cli.command()
@config_options()
@EXPERIMENT
@click.option("--run-name", default=None, help="MLflow run name [default: generated]")
@click.option(
    "--resume", "resume_run", metavar="RUN_ID", default=None, help="continue this run from its checkpoint"
)
@checkpoint_dir_option("where per-epoch checkpoints are kept (one folder per run id)")
@QUIET
def train(
    experiment: str,
    run_name: str | None,
    resume_run: str | None,
    checkpoint_dir: Path,
    quiet: bool,
    **values: Any,
) -> None:
    """Train one Open-Unmix config, evaluate it and log everything to MLflow."""
    from umx_tune import tracking

    given = pop_config_values(values)
    config = None if resume_run else TrainConfig.from_dict(given)
    tracking.check_server()  # fail fast: before torch, the data and the model are loaded

    from umx_tune.experiment import run_experiment
    from umx_tune.loading import resume_config
    from umx_tune.summary import print_summary

    if resume_run:
        config = resume_config(resume_run, checkpoint_dir, given)
    assert config is not None
    with tracking.start_run(experiment=experiment, run_name=run_name, run_id=resume_run) as tracker:
        result = run_experiment(
            config, tracker, resume=bool(resume_run), checkpoint_root=checkpoint_dir, progress=not quiet
        )
    print_summary(result)


@cli.command()
@click.option("--model", "model_ref", default=None, help="MLflow model URI or run id of a umx-tune run")
@click.option(
    "--pretrained", default=None, help="Open-Unmix pretrained model instead (umxhq; needs internet)"
)
@config_options(
    only=("target", "root", "is_wav", "synth_tracks", "synth_duration", "synth_seed", "evaluator", "device")
)
@EXPERIMENT
@click.option("--run-name", default=None, help="MLflow run name [default: generated]")
@QUIET
def evaluate(
    model_ref: str | None,
    pretrained: str | None,
    experiment: str,
    run_name: str | None,
    quiet: bool,
    **values: Any,
) -> None:
    """Evaluate an existing model on the test split and log the scores as a new MLflow run."""
    from umx_tune.evaluation_run import evaluate_model

    if bool(model_ref) == bool(pretrained):
        raise click.UsageError("give exactly one of --model URI and --pretrained NAME")
    given = pop_config_values(values)
    # evaluation cuts no training chunks: keep the default seq_dur clear of short synthetic tracks
    given["seq_dur"] = min(TrainConfig().seq_dur, given.get("synth_duration", TrainConfig().synth_duration))
    config = TrainConfig.from_dict(given)
    evaluate_model(
        config,
        model_ref=model_ref,
        pretrained=pretrained,
        experiment=experiment,
        run_name=run_name,
        progress=not quiet,
    )


@cli.command()
@click.option("--model", "model_ref", required=True, help="MLflow model URI or run id of a umx-tune run")
@click.argument("audio", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), default=Path("separated"), show_default=True
)
@config_options(only=("device",))
@click.option("--stream", is_flag=True, help="separate block by block, as live (unidirectional models)")
@click.option("--block", type=int, default=None, help="with --stream: block in samples [default: one hop]")
@precision_option
def separate(
    model_ref: str, audio: Path, out: Path, stream: bool, block: int | None, precision: str, **values: Any
) -> None:
    """Separate an audio file into the model's target and the residual, written as WAV files."""
    from umx_tune.separate_file import separate_file

    if block is not None and not stream:
        raise click.UsageError("--block sets the streaming block; it needs --stream")
    if precision != "float32" and not stream:
        raise click.UsageError("--precision sets the streaming weights; it needs --stream")
    config = TrainConfig.from_dict(pop_config_values(values))
    written = separate_file(
        model_ref, audio, out, device_name=config.device, stream=stream, block=block, precision=precision
    )
    for path in written:
        click.echo(str(path))


@cli.group()
def data() -> None:
    """Datasets."""


@data.command("synth")
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="folder to create"
)
@click.option("--tracks", type=click.IntRange(min=2), default=TrainConfig().synth_tracks, show_default=True)
@click.option(
    "--duration", type=click.FloatRange(min=1.0), default=TrainConfig().synth_duration, show_default=True
)
@click.option("--seed", type=click.IntRange(min=0), default=TrainConfig().synth_seed, show_default=True)
@QUIET
def data_synth(out: Path, tracks: int, duration: float, seed: int, quiet: bool) -> None:
    """Write the synthetic MUSDB-shaped dataset (training, validation and test tracks) to OUT."""
    from umx_tune.data.synth import write_synth_dataset

    click.echo(str(write_synth_dataset(out, tracks=tracks, duration=duration, seed=seed, progress=not quiet)))


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user errors become one line on stderr and exit status 2."""
    # MLflow's INFO lines ("Creating a new experiment") would interleave with our output
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    try:
        cli.main(args=argv, prog_name="umx-tune", standalone_mode=False)
    except click.exceptions.Exit as stop:
        sys.exit(stop.exit_code)
    except click.UsageError as err:
        hint = f" (see '{err.ctx.command_path} --help')" if err.ctx else ""
        _fail(f"{err.format_message()}{hint}", err.exit_code)
    except click.ClickException as err:
        _fail(err.format_message(), 2)
    except UmxTuneError as err:
        _fail(str(err), err.exit_code)
    except (KeyboardInterrupt, click.exceptions.Abort):
        _fail("interrupted", 130)


def _fail(message: str, code: int) -> None:
    click.echo(f"umx-tune: error: {' '.join(message.split())}", err=True)
    sys.exit(code)
