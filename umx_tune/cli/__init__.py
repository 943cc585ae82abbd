"""`umx-tune`: the command-line entry point.

Each command lives in its own module of this package and is registered once, in COMMANDS; its
module is imported only when the command runs (or `--help` lists it), so that `umx-tune train`
does not pay for Optuna and `--help` for none of torch, MLflow and Optuna.
Every user error is one line on stderr and exit status 2; Ctrl-C exits 130, SIGTERM (which cleans
up as Ctrl-C does, umx_tune.signals) 143.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

from umx_tune.errors import UmxTuneError
from umx_tune.signals import TERMINATED_EXIT, Terminated, terminate_like_ctrl_c

# command name -> "module:attribute" of its click command
COMMANDS = {
    "train": "umx_tune.cli.train:train",
    "evaluate": "umx_tune.cli.evaluate:evaluate",
    "separate": "umx_tune.cli.separate:separate",
    "compose": "umx_tune.cli.compose:compose",
    "data": "umx_tune.cli.data:data",
    "optimize": "umx_tune.cli.optimize:optimize",
    "realtime": "umx_tune.cli.realtime:realtime",
    "report": "umx_tune.cli.report:report",
    "compare": "umx_tune.cli.compare:compare",
    "deploy": "umx_tune.cli.deploy:deploy",
    "dashboard": "umx_tune.cli.dashboard:dashboard",
    "export": "umx_tune.cli.export:export",
}


class LazyGroup(click.Group):
    """The umx-tune group: its commands are those of COMMANDS, imported when asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attribute = COMMANDS[name].split(":")
        command: click.Command = getattr(importlib.import_module(module), attribute)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="umx-tune")
def cli() -> None:
    """Train, evaluate and tune Open-Unmix models; every run is tracked in MLflow."""


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user errors become one line on stderr and exit status 2."""
    # MLflow's INFO lines ("Creating a new experiment") would interleave with our output
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    terminate_like_ctrl_c()
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
    except (KeyboardInterrupt, click.exceptions.Abort) as stop:
        # click passes an interrupt on as Abort, from it
        if isinstance(stop, Terminated) or isinstance(stop.__cause__, Terminated):
            _fail("terminated", TERMINATED_EXIT)
        _fail("interrupted", 130)


def _fail(message: str, code: int) -> None:
    click.echo(f"umx-tune: error: {' '.join(message.split())}", err=True)
    sys.exit(code)
