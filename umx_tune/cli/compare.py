"""`umx-tune compare A B`: is one config better than another, or is the difference noise?"""

from __future__ import annotations

import click

from umx_tune.cli.options import ALLOW_MIXED_PROTOCOLS


@click.command("compare")
@click.argument("a")
@click.argument("b")
@click.option("--study", default=None, help="A and B name grid entries (or runs) of this study")
@click.option("--experiment", default=None, help="where to look for --study [default: every experiment]")
@click.option("--json", "as_json", is_flag=True, help="print the comparison as JSON")
@ALLOW_MIXED_PROTOCOLS
@click.option("--seed", type=int, default=0, show_default=True, help="seed of the bootstrap resampling")
def compare(
    a: str,
    b: str,
    study: str | None,
    experiment: str | None,
    as_json: bool,
    allow_mixed_protocols: bool,
    seed: int,
) -> None:
    """Paired comparison of A and B (run ids, or grid entry names within --study) over the test
    tracks both were scored on (with replicates: seeds x tracks): mean and median difference A − B
    per metric, its 95% paired bootstrap interval and the Wilcoxon signed-rank p-value.

    \b
    umx-tune compare --study grid open-unmix open-unmix2
    umx-tune compare RUN_ID RUN_ID --json
    """
    from umx_tune.report import compare as comparing
    from umx_tune.report import runs

    if a == b:
        raise click.UsageError(f"A and B are both {a!r}; compare two different configs")
    report = runs.load_study(study, experiment) if study else runs.load_runs([a, b])
    a_runs, b_runs = runs.config_runs(report, a), runs.config_runs(report, b)
    protocol = runs.check_protocols([*a_runs, *b_runs], allow_mixed_protocols)
    result = comparing.compare(a, a_runs, b, b_runs, seed=seed)
    if report.parent_run_id:
        comparing.log_to(report.parent_run_id, result)
    if as_json:
        click.echo(result.to_json(), nl=False)
    else:
        click.echo(f"protocol: {protocol}")
        click.echo(comparing.table(result), nl=False)
