"""`umx-tune report`: a study's (or experiment's, or runs') tables and plots, read back from MLflow.

The table goes to stdout in the chosen format (so csv and json can be piped); where the plots went
goes to stderr.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from umx_tune.cli.options import ALLOW_MIXED_PROTOCOLS
from umx_tune.paths import require_writable
from umx_tune.report.tables import FORMATS

if TYPE_CHECKING:
    from umx_tune.report.page import Pair
    from umx_tune.report.runs import Report


@click.command("report")
@click.option("--study", default=None, help="study name (the umx_tune.study tag of its runs)")
@click.option(
    "--experiment", default=None, help="MLflow experiment name: all its runs, or where to look for --study"
)
@click.option("--runs", "runs_flag", is_flag=True, help="report the RUN_ID arguments")
@click.argument("run_ids", nargs=-1, metavar="[RUN_ID]...")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="markdown", show_default=True)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="write the plots to this folder [default: log them to the study's parent run]",
)
@click.option("--no-plots", is_flag=True, help="print the tables only (no plots, no page)")
@click.option(
    "--baseline",
    default=None,
    metavar="CONFIG",
    help="the page plays the best config against this one (grid entry, run name or id) [default: the worst]",
)
@ALLOW_MIXED_PROTOCOLS
def report(
    study: str | None,
    experiment: str | None,
    runs_flag: bool,
    run_ids: tuple[str, ...],
    fmt: str,
    out: Path | None,
    no_plots: bool,
    baseline: str | None,
    allow_mixed_protocols: bool,
) -> None:
    """Print the study's two tables (training; SDR/SIR/ISR/SAR), each value with its 95% interval,
    the findings on the study's questions, and write its plots and its page (index.html: the
    tables, the plots, and players for the best config against the worst or --baseline).

    \b
    umx-tune report --study grid                 # tables; plots and page logged to the parent run
    umx-tune report --study grid --baseline open-unmix
    umx-tune report --experiment umx-tune --format csv
    umx-tune report --runs RUN_ID RUN_ID --out plots/
    """
    from umx_tune.report import note, page, runs, tables

    if runs_flag and not run_ids:
        raise click.UsageError("give run ids after --runs, e.g. --runs ID1 ID2")
    if run_ids and not runs_flag:
        raise click.UsageError(f"unexpected argument {run_ids[0]!r}; run ids follow --runs")
    if runs_flag and (study or experiment):
        raise click.UsageError("give either --runs or --study/--experiment")
    if baseline is not None and no_plots:
        raise click.UsageError("--baseline is for the page, which --no-plots leaves out")
    if out is not None and not no_plots:
        require_writable(out, "the report")
    if study:
        result = runs.load_study(study, experiment)
    elif experiment:
        result = runs.load_experiment(experiment)
    elif runs_flag:
        result = runs.load_runs(run_ids)
    else:
        raise click.UsageError("say what to report: --study NAME, --experiment NAME or --runs ID ...")
    protocol = runs.check_protocols(result.rows, allow_mixed_protocols)
    pair = None if no_plots else page.choose_pair(result, baseline)  # a bad baseline: before any output
    click.echo(tables.render(result, fmt, protocol), nl=False)
    if fmt == "markdown" and result.parent_run_id:  # csv and json stay one table each
        from umx_tune.report.importances import markdown as importances_markdown

        click.echo(importances_markdown(result.parent_run_id), nl=False)
    artifacts = [] if no_plots else _plots(result, out, protocol, pair)
    if result.study and result.parent_run_id:
        note.set_note(result, artifacts)
        click.echo(f"description of parent run {result.parent_run_id} updated", err=True)
    url = note.ui_url(result)
    if url:
        click.echo(f"compare in the MLflow UI: {url}", err=True)


def _plots(result: Report, out: Path | None, protocol: str, pair: Pair | None) -> list[str]:
    """Write the plots and the page to out, else log them to the parent run; the artifact paths logged."""
    from umx_tune.report import page

    if out is not None:
        for path in page.write_report(result, out, protocol, pair):
            click.echo(f"{_kind(path.name)}: {path}", err=True)
        return []
    if result.parent_run_id is None:
        click.echo("plots: not written (no study parent run to log them to; give --out DIR)", err=True)
        return []
    artifacts = page.log_report(result, result.parent_run_id, protocol, pair)
    for artifact in artifacts:
        click.echo(f"{_kind(artifact)}: {artifact} (artifact of run {result.parent_run_id})", err=True)
    return artifacts


def _kind(path: str) -> str:
    return "page" if path.endswith(".html") else "plot"
