"""`umx-tune dashboard`: optuna-dashboard on the studies `optimize` runs, until Ctrl-C."""

from __future__ import annotations

import click

from umx_tune.search.dashboard import DEFAULT_HOST, DEFAULT_PORT


@click.command()
@click.option("--study-name", default=None, help="open this study's page [default: the list of studies]")
@click.option(
    "--storage",
    "storage_url",
    default=None,
    help="Optuna storage URL [default: optimize's: UMX_TUNE_STORAGE, else from the tracking URI]",
)
@click.option("--host", default=DEFAULT_HOST, show_default=True, help="address to serve on")
@click.option("--port", type=click.IntRange(1, 65535), default=DEFAULT_PORT, show_default=True)
def dashboard(study_name: str | None, storage_url: str | None, host: str, port: int) -> None:
    """Serve optuna-dashboard on the Optuna storage that `optimize` uses here: every study's trials
    with their values and params, history, importances, live. Ctrl-C stops it (exit status 0).

    \b
    umx-tune dashboard --study-name grid-20261201-101500 --port 8080
    """
    from umx_tune.search import storage
    from umx_tune.search.dashboard import open_dashboard
    from umx_tune.tracking.server import tracking_uri

    url = storage_url or storage.default_url(tracking_uri(), warn=False)
    served = open_dashboard(url, study_name, host, port)
    click.echo(f"optuna-dashboard of {served.storage_url}: {served.url}")
    click.echo("serving until Ctrl-C", err=True)
    try:
        served.server.serve_forever()
    except KeyboardInterrupt:  # the way to stop a server: not a failure
        click.echo("dashboard stopped", err=True)
    finally:
        served.server.server_close()
