"""The `umx-tune optimize` command: options, input checks, then the driver.

Every option that may be left out also accepts an empty value, because the MLproject entry point
passes each of its parameters on every call ("" where the user gave none).
"""

from __future__ import annotations

import datetime
import functools
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from umx_tune import cores
from umx_tune.cli.options import checkpoint_dir_option, config_options, pop_config_values
from umx_tune.config import TrainConfig
from umx_tune.errors import ConfigError
from umx_tune.search import choices, objectives, plans, show
from umx_tune.search.settings import Request
from umx_tune.tracking import TRACKING_URI_ENV

if TYPE_CHECKING:
    from umx_tune.search.driver import RunOptions


class Blankable(click.ParamType):
    """Another click type, with "" meaning 'not given' (None)."""

    def __init__(self, inner: click.ParamType) -> None:
        self.inner = inner
        self.name = inner.name

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        return self.inner.convert(value, param, ctx)


TEXT = Blankable(click.STRING)


def _names(registry: dict[str, Any]) -> str:
    return ", ".join(registry)


@click.command()
@click.option(
    "--grid", type=TEXT, metavar="NAME|FILE", help="replay a grid: shipped name (seed) or YAML file"
)
@click.option(
    "--search", type=TEXT, metavar="NAME|FILE", help="search a space: shipped name (default) or YAML"
)
@click.option("--show-grid", type=TEXT, metavar="NAME|FILE", help="print what the grid would run, then exit")
@click.option("--show-space", type=TEXT, metavar="NAME|FILE", help="print the search space, then exit")
@click.option("--study-name", type=TEXT, help="study to create, join or resume [default: a new name]")
@click.option("--n-trials", type=Blankable(click.IntRange(min=1)), help="search budget over all workers")
@click.option(
    "--replicates",
    type=Blankable(click.IntRange(min=1)),
    help="grid: training seeds per entry (the base seed, +1, ...), each its own trial [default: 1]; "
    "with --confirm-best: seeds per confirmed config [default: 3]",
)
@click.option(
    "--confirm-best",
    type=Blankable(click.IntRange(min=1)),
    metavar="K",
    help="search: at the end, run the best K configs again with --replicates seeds; the best is then "
    "the best mean over seeds",
)
@click.option(
    "--timeout",
    type=Blankable(click.FloatRange(min=0, min_open=True)),
    help="seconds after which this worker starts no new trial",
)
@click.option("--objective", type=TEXT, help=f"{_names(objectives.OBJECTIVES)} [default: valid_loss]")
@click.option("--sampler", type=TEXT, help=f"Optuna sampler: {_names(choices.SAMPLERS)} [default: tpe]")
@click.option("--sampler-seed", type=Blankable(click.INT), help="sampler seed (give each worker its own)")
@click.option(
    "--pruner",
    type=TEXT,
    help=f"on the per-epoch validation loss: {_names(choices.PRUNERS)} [default: median; grids none]",
)
@click.option(
    "--pruner-startup-trials",
    type=click.IntRange(min=0),
    default=3,
    show_default=True,
    help="finished trials before the median pruner prunes",
)
@click.option(
    "--storage", type=TEXT, help="Optuna storage URL [default: from the tracking URI; UMX_TUNE_STORAGE]"
)
@click.option(
    "--heartbeat-interval",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="seconds between heartbeats; a trial silent for 3 intervals is failed and queued again",
)
@click.option("--register-best", type=TEXT, metavar="NAME", help="register the best trial's model as NAME")
@click.option(
    "--check",
    is_flag=True,
    help="audit study --study-name: print where MLflow and Optuna disagree (exit 1 if they do), then exit",
)
@click.option(
    "--repair",
    is_flag=True,
    help="make MLflow agree with Optuna for study --study-name (re-mirror runs, end orphan runs, queue "
    "entries lost to tracking errors, rewrite the summary), then exit; safe while workers run",
)
@click.option("--experiment", type=TEXT, help="MLflow experiment [default: umx-tune]")
@checkpoint_dir_option("per-trial checkpoints (one folder per run id)")
@click.option(
    "--quiet", is_flag=True, help="print the final summary only (no per-trial or per-epoch progress)"
)
@click.option(
    "--backend",
    type=click.Choice(["local", "spark"]),
    default="local",
    show_default=True,
    help="local: this process is one worker; spark: --spark-workers workers run as Spark tasks",
)
@click.option("--spark-master", type=TEXT, help="Spark master URL [default: local[N], N = --spark-workers]")
@click.option(
    "--spark-workers", type=click.IntRange(min=1), default=2, show_default=True, help="workers as Spark tasks"
)
@config_options()
def optimize(**kwargs: Any) -> None:
    """Run a study: replay a grid or search a space, one nested MLflow run per trial.

    Several workers (processes, machines) sharing --study-name and the storage share the study;
    `umx-tune optimize --study-name NAME` alone resumes it. Every `train` option sets the base
    config that grid or space values override.
    """
    given = pop_config_values(kwargs)
    if kwargs["check"] or kwargs["repair"]:
        _audit(kwargs)
        return
    base = TrainConfig.from_dict(given)
    cores.check_environment()
    if _show(kwargs, base):
        return
    request = _request(kwargs, given, base)
    if kwargs["backend"] == "spark":  # its tasks are the workers; their shares are given (spark.py)
        from umx_tune.search.spark import run_on_spark

        run_on_spark(
            request, _run_options(kwargs, kwargs["timeout"]), kwargs["spark_master"], kwargs["spark_workers"]
        )
        return
    _work(request, kwargs, base.threads)


def _work(request: Request, kwargs: dict[str, Any], threads: int) -> None:
    """This process as one worker of the study, on cores it keeps (umx_tune/cores.py): where its
    study's other workers hold every core, it waits before it imports torch and MLflow, and ends
    without a trial if the study has nothing left by then. --timeout counts from here, the wait
    included."""
    started, timeout = time.monotonic(), kwargs["timeout"]

    def past_timeout() -> bool:
        return timeout is not None and time.monotonic() - started >= timeout

    group = cores.group_of(request.identity(), kwargs["storage"] or "", *_environment())
    on_wait = None if kwargs["quiet"] else functools.partial(cores.print_waiting, study=request.study_name)
    with cores.kept(threads, group, on_wait, past_timeout) as starts:
        if not starts:
            why = "timeout" if past_timeout() else "done: its other workers here ran every trial"
            print(f"study {request.study_name}: this worker ran trials: none (stopped: {why})")
            return
        from umx_tune.search import driver  # the heavy imports, on a core of its own

        left = None if timeout is None else timeout - (time.monotonic() - started)
        driver.print_outcome(driver.optimize(request, _run_options(kwargs, left)))


def _environment() -> list[str]:
    """What else tells which study and storage a worker means: its folder (relative paths), the
    tracking URI and the umx-tune variables (the storage among them); not MLflow's others:
    `mlflow run` gives each worker its own MLFLOW_RUN_ID."""
    names = sorted(n for n in os.environ if n.startswith("UMX_TUNE_") or n == TRACKING_URI_ENV)
    return [os.getcwd(), *(f"{n}={os.environ[n]}" for n in names)]


def _run_options(kwargs: dict[str, Any], timeout: float | None) -> RunOptions:
    """This worker's driver.RunOptions, with the seconds of --timeout it has left."""
    from umx_tune.search import driver

    return driver.RunOptions(
        storage_url=kwargs["storage"],
        heartbeat_interval=kwargs["heartbeat_interval"],
        timeout=timeout,
        sampler_seed=kwargs["sampler_seed"],
        pruner_startup_trials=kwargs["pruner_startup_trials"],
        register_best=kwargs["register_best"],
        checkpoint_root=kwargs["checkpoint_dir"],
        progress=not kwargs["quiet"],
    )


def _audit(kwargs: dict[str, Any]) -> None:
    """--check / --repair: the study audit (search/audit.py); exit 1 while anything disagrees."""
    from umx_tune.search import audit

    if not kwargs["study_name"]:
        raise ConfigError("--check and --repair need the --study-name of the study to audit")
    found = audit.open_audit(
        kwargs["study_name"], kwargs["storage"], kwargs["heartbeat_interval"], kwargs["repair"]
    )
    sys.exit(audit.run(found, repair=kwargs["repair"]))  # click's Exit is returned, not raised, here


def _show(kwargs: dict[str, Any], base: TrainConfig) -> bool:
    if kwargs["show_grid"]:
        click.echo(show.grid_table(plans.load_grid(kwargs["show_grid"], base), base))
    if kwargs["show_space"]:
        click.echo(show.space_table(plans.load_space(kwargs["show_space"], base), base))
    return bool(kwargs["show_grid"] or kwargs["show_space"])


def _request(kwargs: dict[str, Any], given: dict[str, Any], base: TrainConfig) -> Request:
    """Everything checked before anything starts: names, plan files, budget."""
    if kwargs["objective"] is not None:
        objectives.get(kwargs["objective"])
    choices.check_names(kwargs["sampler"] or "tpe", kwargs["pruner"] or "median")
    if kwargs["grid"] and kwargs["search"]:
        raise ConfigError("give --grid or --search, not both")
    if kwargs["confirm_best"] is not None and not kwargs["search"]:
        raise ConfigError(
            f"--confirm-best {kwargs['confirm_best']} is for --search; a grid's seeds are --replicates"
        )
    plan: plans.Grid | plans.Space | None = None
    if kwargs["grid"]:
        plan = plans.load_grid(kwargs["grid"], base)
        if kwargs["n_trials"] is not None:
            entries = len(plan.entries)
            raise ConfigError(f"--n-trials is for --search; a grid runs each of its {entries} entries once")
    elif kwargs["search"]:
        if kwargs["replicates"] is not None and kwargs["confirm_best"] is None:
            raise ConfigError(
                "--replicates with --search needs --confirm-best K: the seeds of its best K configs"
            )
        if kwargs["replicates"] == 1 and kwargs["confirm_best"] is not None:
            raise ConfigError(
                "--confirm-best needs --replicates of at least 2: one more seed than the search ran"
            )
        plan = plans.load_space(kwargs["search"], base)
    name = kwargs["study_name"]
    if name is None:
        if plan is None:
            raise ConfigError("give --grid, --search, or the --study-name of a study to resume")
        stem = Path(plan.name.split(" ")[-1]).stem
        name = f"{stem}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    return Request(
        study_name=name,
        plan=plan,
        objective=kwargs["objective"],
        n_trials=kwargs["n_trials"],
        base_values=given,
        sampler=kwargs["sampler"],
        pruner=kwargs["pruner"],
        experiment=kwargs["experiment"],
        replicates=kwargs["replicates"],
        confirm_best=kwargs["confirm_best"],
    )
