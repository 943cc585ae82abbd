"""`umx-tune separate`: one audio file through a logged model, written as WAV files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from umx_tune.cli.options import (
    MODEL_REFERENCE,
    TRUST_MODEL,
    config_options,
    pop_config_values,
    precision_option,
)
from umx_tune.config import TrainConfig


@click.command()
@click.option("--model", "model_ref", required=True, help=MODEL_REFERENCE)
@TRUST_MODEL
@click.argument("audio", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), default=Path("separated"), show_default=True
)
@config_options(only=("device",))
@click.option("--stream", is_flag=True, help="separate block by block, as live (unidirectional models)")
@click.option("--block", type=int, default=None, help="with --stream: block in samples [default: one hop]")
@precision_option
def separate(
    model_ref: str,
    trust_model: bool,
    audio: Path,
    out: Path,
    stream: bool,
    block: int | None,
    precision: str,
    **values: Any,
) -> None:
    """Separate an audio file into the model's target and the residual, written as WAV files.

    --stream separates block by block as `StreamingSeparator` does live (niter=0, causal), with the
    streaming network's weights in --precision.
    """
    if block is not None and not stream:
        raise click.UsageError("--block sets the streaming block; it needs --stream")
    if precision != "float32" and not stream:
        raise click.UsageError("--precision sets the streaming weights; it needs --stream")
    config = TrainConfig.from_dict(pop_config_values(values))

    from umx_tune.data.audio import read_audio
    from umx_tune.separation.model import resolve_device
    from umx_tune.separation.offline import separate as separate_offline
    from umx_tune.separation.offline import write_estimates
    from umx_tune.separation.streaming import stream_estimates
    from umx_tune.tracking.models import load_separator

    device = resolve_device(config.device)
    separator = load_separator(model_ref, device, trust_model=trust_model)
    mixture = read_audio(audio)
    if stream:
        estimates = stream_estimates(separator, mixture, block, device, precision)
    else:
        estimates = separate_offline(separator, mixture, device)
    target = next(iter(separator.target_models))
    for path in write_estimates(estimates, target, audio.stem, out):
        click.echo(str(path))
