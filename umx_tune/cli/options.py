"""Click options shared by the commands: those derived from TrainConfig, --checkpoint-dir and --precision."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import click

from umx_tune.config import STREAM_PRECISIONS, TrainConfig, param_fields, param_type
from umx_tune.errors import ConfigError
from umx_tune.paths import DEFAULT_CHECKPOINT_ROOT
from umx_tune.tracking import DEFAULT_EXPERIMENT

_CLICK_TYPES: dict[str, Any] = {
    "int": click.INT,
    "float": click.FLOAT,
    "str": click.STRING,
    "bool": click.BOOL,
}


def option_name(param: str) -> str:
    """CLI spelling of a TrainConfig parameter: hidden_size -> --hidden-size."""
    return "--" + param.replace("_", "-")


def negated_name(param: str) -> str:
    """The flag that turns off a boolean parameter that defaults to on: audio -> --no-audio."""
    return "--no-" + param.replace("_", "-")


def _negatable(f: dataclasses.Field) -> bool:
    """A boolean parameter that defaults to True also gets its --no-NAME flag."""
    return param_type(f) == "bool" and f.default is True


def config_options(only: Iterable[str] | None = None) -> Callable[[Callable], Callable]:
    """Decorator adding one option per TrainConfig parameter (or those in only), and --no-NAME for
    a boolean one that is on by default; defaults stay None so that `pop_config_values` can tell
    what the user set."""
    wanted = set(only) if only is not None else None
    defaults = TrainConfig()

    def decorate(func: Callable) -> Callable:
        for f in reversed(param_fields()):
            if wanted is not None and f.name not in wanted:
                continue
            kind = param_type(f)
            if _negatable(f):
                func = click.option(
                    negated_name(f.name),
                    f"no_{f.name}",
                    is_flag=True,
                    help=f"the same as {option_name(f.name)} false",
                )(func)
            extra: dict[str, Any] = {}
            if kind == "bool":  # `--unidirectional` alone, or `--unidirectional false` (MLproject)
                extra = {"is_flag": False, "flag_value": True}
            choices = f.metadata["choices"]
            func = click.option(
                option_name(f.name),
                f.name,
                type=click.Choice(choices) if choices else _CLICK_TYPES[kind],
                default=None,
                help=f"{f.metadata['help']} [default: {getattr(defaults, f.name)!r}]",
                **extra,
            )(func)
        return func

    return decorate


def pop_config_values(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Remove the TrainConfig options (and --no-NAME flags) from a command's kwargs; return those the
    user set. ConfigError for a flag and its opposite value given together."""
    names = {f.name for f in param_fields()}
    given = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
    given = {k: v for k, v in given.items() if v is not None}
    for f in filter(_negatable, param_fields()):
        if kwargs.pop(f"no_{f.name}", False):
            if given.get(f.name) is True:  # click has typed it
                raise ConfigError(f"give {option_name(f.name)} or {negated_name(f.name)}, not both")
            given[f.name] = False
    return given


def checkpoint_dir_option(help_text: str) -> Callable[[Callable], Callable]:
    """--checkpoint-dir: the folder that holds one checkpoint folder per run id."""
    return click.option(
        "--checkpoint-dir",
        type=click.Path(path_type=Path),
        default=DEFAULT_CHECKPOINT_ROOT,
        show_default=True,
        help=help_text,
    )


precision_option = click.option(
    "--precision",
    type=click.Choice(STREAM_PRECISIONS),
    default="float32",
    show_default=True,
    help="streaming weights: float32 (equal to offline separation) or float16 (CPU; half the bytes "
    "each frame reads, within 2e-4 of the output's peak)",
)

QUIET = click.option("--quiet", is_flag=True, help="no progress output")
EXPERIMENT = click.option(
    "--experiment", default=DEFAULT_EXPERIMENT, show_default=True, help="MLflow experiment name"
)
ALLOW_MIXED_PROTOCOLS = click.option(
    "--allow-mixed-protocols",
    is_flag=True,
    help="put runs scored by different evaluation protocols side by side anyway",
)
MODEL_REFERENCE = "a run id, an MLflow model URI (runs:/…, models:/…) or an Open-Unmix model folder"
TRUST_MODEL = click.option(
    "--trust-model",
    is_flag=True,
    help="load a pickled model (MLflow's pytorch flavor, as umx-tune logged before it logged Open-Unmix "
    "folders): loading a pickle runs any code it holds, so only one you trust",
)
