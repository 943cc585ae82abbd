"""`umx-tune data`: dataset commands."""

from __future__ import annotations

from pathlib import Path

import click

from umx_tune.cli.options import QUIET
from umx_tune.config import TrainConfig


@click.group()
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
    from umx_tune.data.synth.lifecycle import write_synth_dataset

    click.echo(str(write_synth_dataset(out, tracks=tracks, duration=duration, seed=seed, progress=not quiet)))
