"""Connections cut while MLflow's answer arrives, through a proxy in front of the session's real
server: the run's end and the study mirror's writes are tried again, and the repeats are safe."""

from __future__ import annotations

from collections.abc import Iterator

import mlflow
import optuna
import pytest
from conftest import MlflowServer
from cutting_proxy import CuttingProxy
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from umx_tune import tracking
from umx_tune.search import mirror
from umx_tune.tracking.runs import start_run

UPDATE_RUN = "/api/2.0/mlflow/runs/update"
LOG_BATCH = "/api/2.0/mlflow/runs/log-batch"


@pytest.fixture
def proxy(
    mlflow_server: MlflowServer, tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[CuttingProxy]:
    """umx-tune in this process talks to the session's server through a CuttingProxy."""
    proxy = CuttingProxy(mlflow_server.uri)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", proxy.url)
    mlflow.set_tracking_uri(proxy.url)
    yield proxy
    proxy.close()


def _runs(server: MlflowServer, experiment: str) -> list[mlflow.entities.Run]:
    """Every run of the experiment, read from the server itself."""
    client = MlflowClient(server.uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None
    return client.search_runs([found.experiment_id])


def test_a_cut_while_a_failed_run_ends_leaves_that_run_failed_with_its_reason(
    proxy: CuttingProxy, mlflow_server: MlflowServer
) -> None:
    experiment = "test-cut-run-end"
    proxy.cut(LOG_BATCH)  # the end's batch: the staged metric and the error tag
    proxy.cut(UPDATE_RUN)  # the end itself
    with pytest.raises(RuntimeError, match="boom"), start_run(experiment=experiment, run_name="cut") as run:
        run.log_metrics({"m": 1.0}, step=1)
        raise RuntimeError("boom")
    assert proxy.cut_paths == [LOG_BATCH, UPDATE_RUN]
    (ended,) = _runs(mlflow_server, experiment)  # no second run carries the error
    assert ended.info.run_id == run.run_id
    assert ended.info.status == "FAILED"
    assert ended.data.tags[tracking.TAG_ERROR] == "RuntimeError: boom"
    assert ended.data.metrics["m"] == 1.0


def test_a_cut_while_a_trial_end_is_recorded_is_survived(
    proxy: CuttingProxy, mlflow_server: MlflowServer
) -> None:
    client = MlflowClient(mlflow_server.uri)
    run = client.create_run(client.create_experiment("test-cut-mirror"))
    client.set_terminated(run.info.run_id)
    trial = optuna.trial.create_trial(state=TrialState.COMPLETE, value=0.25)
    proxy.cut(LOG_BATCH)
    mirror.record_trial_end(run.info.run_id, trial)
    assert proxy.cut_paths == [LOG_BATCH]
    recorded = client.get_run(run.info.run_id)
    assert recorded.data.tags[tracking.TAG_TRIAL_STATE] == "COMPLETE"
    assert recorded.data.metrics[tracking.TRIAL_VALUE] == 0.25
    assert recorded.info.status == "FINISHED"
