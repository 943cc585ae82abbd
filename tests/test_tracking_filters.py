"""Study names with quotes, spaces and non-ASCII letters, searched for on the session's real server:
the storage guard, the report and the UI link each find exactly that study's runs."""

from __future__ import annotations

import urllib.parse

import pytest
from conftest import MlflowServer
from mlflow.tracking import MlflowClient

from umx_tune import tracking
from umx_tune.errors import TrackingError
from umx_tune.report import note, runs
from umx_tune.search import mirror

EXPERIMENT = "test-filters"
NAMES = ["o'brien", 'say "hi"', "études 2026"]
# names a loose match, a lost quote or a dropped word would mistake for one of NAMES
DECOYS = ["o", "obrien", "o brien", "say hi", "say", "études", "etudes 2026", "2026"]


@pytest.fixture(scope="module")
def studies(mlflow_server: MlflowServer) -> dict[str, set[str]]:
    """A parent run (with its Optuna storage) and two trial runs per study name; {name: run ids}."""
    client = MlflowClient(mlflow_server.uri)
    experiment_id = client.create_experiment(EXPERIMENT)
    written = {}
    for name in NAMES + DECOYS:
        tags = {tracking.TAG_STUDY: name, tracking.TAG_STUDY_STORAGE: f"sqlite:///{name}.db"}
        parent = client.create_run(experiment_id, tags=tags, run_name=name).info.run_id
        trial_tags = {tracking.TAG_STUDY: name, tracking.TAG_PARENT_RUN: parent}
        trials = {client.create_run(experiment_id, tags=trial_tags).info.run_id for _ in range(2)}
        written[name] = {parent, *trials}
    return written


def _experiment_id(server: MlflowServer) -> str:
    experiment = MlflowClient(server.uri).get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    return experiment.experiment_id


def _search(server: MlflowServer, filter_string: str) -> set[str]:
    """The ids of the experiment's runs that match the filter, as the server finds them."""
    found = MlflowClient(server.uri).search_runs([_experiment_id(server)], filter_string)
    return {r.info.run_id for r in found}


@pytest.mark.parametrize("name", NAMES)
def test_a_filter_finds_the_study_of_that_name_only(
    name: str, studies: dict[str, set[str]], mlflow_server: MlflowServer
) -> None:
    assert _search(mlflow_server, tracking.tag_equals(tracking.TAG_STUDY, name)) == studies[name]


@pytest.mark.parametrize("name", NAMES)
def test_the_storage_guard_finds_the_study_of_that_name_only(
    name: str, studies: dict[str, set[str]], tracking_uri: str
) -> None:
    assert mirror.study_storages(EXPERIMENT, name) == {f"sqlite:///{name}.db"}


@pytest.mark.parametrize("name", NAMES)
def test_the_report_lists_the_study_of_that_name_only(
    name: str, studies: dict[str, set[str]], tracking_uri: str
) -> None:
    report = runs.load_study(name, EXPERIMENT)
    assert {row.run_id for row in report.rows} | {report.parent_run_id} == studies[name]


@pytest.mark.parametrize("name", NAMES)
def test_the_ui_link_filters_to_the_study_of_that_name_only(
    name: str, studies: dict[str, set[str]], mlflow_server: MlflowServer, tracking_uri: str
) -> None:
    report = runs.Report(f"study {name}", [], study=name, experiment_id=_experiment_id(mlflow_server))
    url = note.ui_url(report)
    assert url is not None
    query = urllib.parse.urlsplit(url).fragment.partition("?")[2]  # the UI's route: #/experiments/…?…
    (ui_filter,) = urllib.parse.parse_qs(query)["searchFilter"]
    assert _search(mlflow_server, ui_filter) == studies[name]


def test_a_name_with_both_quotes_is_refused_in_one_line(tracking_uri: str) -> None:
    """MLflow's filters cannot match it, so the storage guard refuses it before any study is made,
    also the first one of its experiment."""
    with pytest.raises(TrackingError, match="holds both ' and \"") as refused:
        mirror.study_storages("test-filters-no-experiment-yet", 'o\'brien says "hi"')
    assert "\n" not in str(refused.value)
