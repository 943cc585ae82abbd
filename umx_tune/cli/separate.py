"""`umx-tune separate`: one audio file through a logged model, as Open-Unmix's `umx` separates it."""

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
from umx_tune.data.audio import AUDIO_FORMATS
from umx_tune.paths import require_writable


def _extension(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """'wav', '.wav' or 'WAV' -> 'wav'; a format `separate` cannot write is a usage error."""
    ext = value.lower().lstrip(".")
    if ext not in AUDIO_FORMATS:
        raise click.BadParameter(f"{value!r} is not one of {', '.join(AUDIO_FORMATS)}")
    return ext


def _targets(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> list[str]:
    """--targets vocals --targets drums, or --targets vocals,drums."""
    return [name for text in value for name in text.split(",") if name]


@click.command()
@click.option("--model", "model_ref", required=True, help=MODEL_REFERENCE)
@TRUST_MODEL
@click.argument("audio", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), default=Path("separated"), show_default=True
)
@click.option(
    "--targets", multiple=True, callback=_targets, help="targets to separate [default: all the model's]"
)
@click.option(
    "--residual",
    default=None,
    help="write the mixture minus the separated targets under this name [default: 'accompaniment' "
    "beside vocals alone, 'residual' beside another single target, none beside several]",
)
@click.option(
    "--niter", type=click.IntRange(min=0), default=None, help="Wiener EM iterations [default: the model's]"
)
@click.option(
    "--wiener-win-len",
    type=click.IntRange(min=0),
    default=None,
    help="frames Wiener-filtered together, 0 for the whole signal [default: the model's, 300]",
)
@click.option("--start", type=click.FloatRange(min=0), default=0.0, show_default=True, help="seconds")
@click.option("--duration", type=float, default=None, help="seconds [default, or negative: to the end]")
@click.option(
    "--ext", default="wav", show_default=True, callback=_extension, help=f"{' or '.join(AUDIO_FORMATS)}"
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
    targets: list[str],
    residual: str | None,
    niter: int | None,
    wiener_win_len: int | None,
    start: float,
    duration: float | None,
    ext: str,
    stream: bool,
    block: int | None,
    precision: str,
    **values: Any,
) -> None:
    """Separate an audio file into the model's targets (and the residual), written as <stem>_<name>.<ext>.

    Input at any sample rate is resampled to the model's 44.1 kHz and the estimates back to the
    input's rate; mono input is duplicated to stereo (a mono model separates stereo input as it is).
    --stream separates block by block as `StreamingSeparator` does live (niter=0, causal), with the
    streaming network's weights in --precision.
    """
    if block is not None and not stream:
        raise click.UsageError("--block sets the streaming block; it needs --stream")
    if precision != "float32" and not stream:
        raise click.UsageError("--precision sets the streaming weights; it needs --stream")
    if stream and (niter is not None or wiener_win_len is not None):
        raise click.UsageError(
            "--stream runs no Wiener EM; --niter and --wiener-win-len need offline separation"
        )
    config = TrainConfig.from_dict(pop_config_values(values))
    require_writable(out, "the separated audio")  # before the model is fetched and the audio separated

    from umx_tune.config import SAMPLE_RATE
    from umx_tune.data.audio import read_excerpt
    from umx_tune.separation import offline
    from umx_tune.separation.model import resolve_device
    from umx_tune.separation.streaming import stream_estimates
    from umx_tune.tracking.models import load_separator

    device = resolve_device(config.device)
    model = load_separator(model_ref, device, trust_model=trust_model)
    labels = _labels(targets or list(model.target_models), residual)
    separator = offline.configure(
        model, targets, residual=offline.RESIDUAL in labels, niter=niter, wiener_win_len=wiener_win_len
    )
    mixture, rate = read_excerpt(audio, start, duration)
    at_model_rate = offline.resample(mixture, rate, SAMPLE_RATE)
    if stream:
        estimates = stream_estimates(separator, at_model_rate, block, device, precision)
    else:
        estimates = offline.separate(separator, at_model_rate, device)
    estimates = offline.at_rate(estimates, rate, mixture.shape[-1])
    for path in offline.write_estimates(estimates, labels, audio.stem, out, rate, ext):
        click.echo(str(path))


def _labels(targets: list[str], residual: str | None) -> dict[str, str]:
    """{estimate: file label}: each target, and the residual if named or beside a single target."""
    from umx_tune.separation.offline import RESIDUAL, residual_name

    labels = {target: target for target in targets}
    if residual is None and len(labels) == 1:
        residual = residual_name(targets[0])
    if residual in labels:
        raise click.UsageError(f"--residual {residual} is the name of a target; name the residual apart")
    if residual:
        labels[RESIDUAL] = residual
    return labels
