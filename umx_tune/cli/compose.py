"""`umx-tune compose`: four runs' models, one per target, as one four-target separator in a new run."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from umx_tune.cli.options import EXPERIMENT, MODEL_REFERENCE, TRUST_MODEL
from umx_tune.config import TARGETS

if TYPE_CHECKING:  # torch and MLflow only when the command runs
    from umx_tune.tracking.models import LoadedModel


def _target_options(func: Callable) -> Callable:
    """--vocals, --drums, --bass, --other: each once, the model that separates that target."""
    for target in reversed(TARGETS):
        func = click.option(
            f"--{target}",
            multiple=True,
            required=True,
            metavar="MODEL",
            help=f"the {target} model: {MODEL_REFERENCE}",
        )(func)
    return func


@click.command()
@_target_options
@click.option(
    "--niter", type=click.IntRange(min=0), default=1, show_default=True, help="Wiener EM iterations"
)
@click.option("--register", default=None, metavar="NAME", help="register the composed model under NAME")
@EXPERIMENT
@click.option("--run-name", default=None, help="MLflow run name [default: 'compose']")
@TRUST_MODEL
def compose(
    niter: int, register: str | None, experiment: str, run_name: str | None, trust_model: bool, **refs: Any
) -> None:
    """Compose one separator of the four targets from four models (as Open-Unmix's umxhq is
    composed), log it as one MLflow model in a new run and print its URI.

    `umx-tune evaluate --model` on it scores the four estimates jointly, as SiSEC 2018 does;
    `umx-tune separate --model` separates all four (or --targets).
    """
    for target in TARGETS:
        if len(refs[target]) != 1:
            raise click.UsageError(f"--{target} is given {len(refs[target])} times; one model per target")

    import torch

    from umx_tune import tracking
    from umx_tune.separation.model import assemble
    from umx_tune.tracking.models import load_model
    from umx_tune.tracking.runs import start_run

    device = torch.device("cpu")  # composing computes nothing
    loaded = {target: load_model(refs[target][0], device, trust_model=trust_model) for target in TARGETS}
    _check(loaded)
    first = loaded[TARGETS[0]].separator
    models = {target: model.separator.target_models[target] for target, model in loaded.items()}
    separator = assemble(models, first, residual=False, niter=niter, wiener_win_len=first.wiener_win_len)
    params = {tracking.composed_model_param(t): model.source for t, model in loaded.items()}
    tags = {tracking.TAG_KIND: tracking.KIND_COMPOSITION}
    with start_run(experiment=experiment, run_name=run_name or "compose", tags=tags) as tracker:
        tracker.log_params({**params, tracking.COMPOSE_NITER_PARAM: niter})
        uri = tracker.log_model(separator, {t: model.args.get(t, {}) for t, model in loaded.items()})
        registered = tracker.register_model(uri, register) if register else None
        if registered:
            tracker.set_tags({tracking.TAG_REGISTERED_MODEL: registered})
    click.echo(f"run {tracker.run_id}: {', '.join(TARGETS)} composed (niter {niter})")
    click.echo(f"  model: {uri}" + (f"\n  registered: {registered}" if registered else ""))


def _check(loaded: dict[str, LoadedModel]) -> None:
    """ModelError unless each model separates exactly its option's target and all share one STFT."""
    from umx_tune.errors import ModelError
    from umx_tune.separation.model import stft_settings

    for target, model in loaded.items():
        separates = list(model.separator.target_models)
        if separates != [target]:
            raise ModelError(
                f"--{target} {model.source} separates {', '.join(separates)}, not {target} alone"
            )
    (first, reference), *rest = ((t, stft_settings(m.separator)) for t, m in loaded.items())
    for target, settings in rest:
        for key, value in settings.items():
            if value != reference[key]:
                raise ModelError(
                    f"the {target} model has {key}={value:g} and the {first} model {key}={reference[key]:g}; "
                    "one separator needs one STFT, sample rate and channel count"
                )
