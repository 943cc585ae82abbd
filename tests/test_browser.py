"""The MLflow UI shows a study for comparison: checked in a real headless Chromium (Debian's).

A small study is written to the session's real `mlflow server`; the browser opens the experiment's
runs page, adds the SDR column, expands the study's parent run and reads the table back. With
UMX_TUNE_UPDATE_SCREENSHOT=1 its screenshot replaces the README's (docs/images/mlflow-study.png).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chromium import chromium_page
from conftest import REPO, MlflowServer, run_main
from mlflow.tracking import MlflowClient
from study_runs import write_study

from umx_tune import tracking
from umx_tune.report import note as report_note
from umx_tune.report import runs as report_runs

pytestmark = pytest.mark.slow

STUDY = "grid-ui"
EXPERIMENT = "browser-tests"
SCREENSHOT = REPO / "docs" / "images" / "mlflow-study.png"
PARAM_COLUMNS = ("batch_size", "hidden_size", "epochs")
METRIC_COLUMNS = (tracking.TRAIN_LOSS, *tracking.SEPARATION_METRICS)
HIDDEN_COLUMNS = ("Dataset", "Source", "Models")


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A page in headless Chromium with an empty profile (playwright drives Debian's binary)."""
    with chromium_page(tmp_path_factory.mktemp("chromium-profile"), height=720) as page:
        yield page


@pytest.fixture(scope="module")
def study(mlflow_server: MlflowServer) -> tuple[str, dict[str, str], MlflowClient]:
    """The study written to MLflow: (experiment id, {trial run name: run id}, client)."""
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    parent_id, ids = write_study(client, EXPERIMENT, STUDY)
    experiment_id = client.get_run(parent_id).info.experiment_id
    return experiment_id, ids, client


def show_columns(page: Any) -> None:
    """Tick the study's params and metrics in the Columns menu; untick what does not compare."""
    button = page.get_by_role("button", name="Columns", exact=True)
    button.click()
    menu = page.locator(f'[id="{button.get_attribute("aria-controls")}"]')
    for title in (*HIDDEN_COLUMNS, *PARAM_COLUMNS, *METRIC_COLUMNS):
        menu.get_by_title(title, exact=True).click()
    page.keyboard.press("Escape")


def expand_parent(page: Any, name: str) -> None:
    """Click the +/- expander in the parent run's name cell, so its trials show nested under it."""
    row = page.locator(".ag-row").filter(has=page.get_by_role("link", name=name, exact=True))
    row.locator('[col-id="attributes.`Run Name`"] button').first.click()


def table_cells(page: Any) -> list[dict[str, str]]:
    """The runs table as {column id: text} per row (ag-grid splits a row over pinned and centre parts)."""
    return page.evaluate(
        """() => {
            const rows = {};
            for (const row of document.querySelectorAll('.ag-row[row-index]')) {
                const cells = rows[row.getAttribute('row-index')] ??= {};
                for (const cell of row.querySelectorAll('[col-id]')) {
                    // a run name cell also holds its colour picker's text: take the link's
                    const link = cell.querySelector('a');
                    cells[cell.getAttribute('col-id')] = (link ?? cell).innerText.trim();
                }
            }
            return Object.values(rows);
        }"""
    )


def test_experiment_page_compares_trials_by_name_with_sdr(
    page: Any, study: tuple[str, dict[str, str], MlflowClient], tracking_uri: str, tmp_path: Path
) -> None:
    experiment_id, ids, client = study
    # the link `umx-tune report --study` prints
    url = report_note.ui_url(report_runs.Report(STUDY, [], study=STUDY, experiment_id=experiment_id))
    assert url is not None and url.startswith(tracking_uri)
    page.goto(url)
    page.get_by_role("link", name=STUDY, exact=True).wait_for()
    # room for the table: close MLflow's assistant panel, fold the side bar
    assistant = page.get_by_role("button", name="Close")
    if assistant.is_visible():
        assistant.click()
    page.get_by_role("button", name="Toggle sidebar").click()
    show_columns(page)
    expand_parent(page, STUDY)
    for name in ids:
        page.get_by_role("link", name=name, exact=True).wait_for()
    page.locator('[col-id="metrics.`SDR`"]').first.wait_for()

    by_name = {row.get("attributes.`Run Name`"): row for row in table_cells(page)}
    assert set(ids) <= set(by_name), by_name.keys()
    for name, run_id in ids.items():
        sdr = client.get_run(run_id).data.metrics.get("SDR")
        cell = by_name[name]["metrics.`SDR`"]
        if sdr is None:
            assert cell in ("-", ""), (name, cell)  # never evaluated: the UI shows a dash
        else:
            assert float(cell) == pytest.approx(sdr, abs=1e-3), (name, cell)
    assert by_name["open-unmix3"]["metrics.`SDR`"] == "1.934"
    for name, run_id in ids.items():  # params line up under the same names
        assert by_name[name]["params.`hidden_size`"] == client.get_run(run_id).data.params["hidden_size"]

    # no focus frame or hover highlight in the picture
    page.evaluate("document.activeElement && document.activeElement.blur()")
    page.mouse.move(0, 0)
    shot = page.screenshot(type="png", path=tmp_path / "mlflow-study.png")
    assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) < 300_000
    # run colours and times differ on every run: the README's copy is refreshed only when asked
    if os.environ.get("UMX_TUNE_UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        SCREENSHOT.write_bytes(shot)


def test_parent_run_page_shows_the_description(
    page: Any,
    study: tuple[str, dict[str, str], MlflowClient],
    tracking_uri: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The description `report --study` (and `optimize`, when a study ends) writes, in the UI."""
    experiment_id, ids, client = study
    parent_id = client.get_run(ids["open-unmix"]).data.tags[tracking.TAG_PARENT_RUN]
    described = run_main(capsys, "report", "--study", STUDY, "--no-plots")
    assert described.returncode == 0, described.stderr
    page.goto(f"{tracking_uri}/#/experiments/{experiment_id}/runs/{parent_id}")
    # the description is markdown; MLflow renders its tables as HTML tables
    cell = page.locator("table td", has_text="1.934").first
    cell.wait_for()
    assert page.locator("table td", has_text="open-unmix6").count() >= 2
