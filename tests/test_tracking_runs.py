"""Runs through the tracking gateway against the session's real server: each tracker writes to its
own run by id (a parent and its nested child open at once; the model too), several processes
logging the same dataset into one experiment at once all succeed, and a run talks to its tracking
server only."""

from __future__ import annotations

import multiprocessing
import os
import socket
import subprocess
import threading
from pathlib import Path
from threading import Barrier

import mlflow
from conftest import TINY, VENV_BIN, MlflowServer, cli_env
from mlflow.tracking import MlflowClient

from umx_tune import tracking
from umx_tune.cli.options import option_name
from umx_tune.tracking.runs import start_run

RACERS = 3
ROUNDS = 4


def test_parent_and_nested_child_open_at_once_each_get_their_own_logs(tracking_uri: str) -> None:
    experiment = "test-runs-by-id"
    with start_run(experiment=experiment, run_name="parent") as parent:
        with start_run(experiment=experiment, run_name="child", parent_run_id=parent.run_id) as child:
            parent.log_metrics({"written_by": 1.0})
            child.log_metrics({"written_by": 2.0})
            child.set_tags({"owner": "child"})
        parent.set_tags({"owner": "parent"})
    assert mlflow.active_run() is None  # MLflow's fluent API holds no run of ours
    client = MlflowClient(tracking_uri)
    parent_run, child_run = client.get_run(parent.run_id), client.get_run(child.run_id)
    assert (parent_run.data.metrics["written_by"], child_run.data.metrics["written_by"]) == (1.0, 2.0)
    assert (parent_run.data.tags["owner"], child_run.data.tags["owner"]) == ("parent", "child")
    assert child_run.data.tags[tracking.TAG_PARENT_RUN] == parent.run_id
    assert tracking.TAG_PARENT_RUN not in parent_run.data.tags
    assert (parent_run.info.status, child_run.info.status) == ("FINISHED", "FINISHED")


def test_a_model_is_logged_into_its_runs_experiment_without_an_active_run(tracking_uri: str) -> None:
    import torch

    from umx_tune.config import TrainConfig
    from umx_tune.separation.model import build_separator, build_unmix
    from umx_tune.tracking.models import load_separator

    config = TrainConfig.from_dict({"hidden_size": 4, "nfft": 64, "nhop": 16})
    with start_run(experiment="test-runs-model") as run:
        uri = run.log_model(build_separator(config, build_unmix(config)), {})
    info = mlflow.models.get_model_info(uri)
    client = MlflowClient(tracking_uri)
    experiment_id = client.get_run(run.run_id).info.experiment_id
    assert info.run_id == run.run_id
    assert client.get_logged_model(info.model_id).experiment_id == experiment_id  # not the default one
    loaded = load_separator(uri, torch.device("cpu"))
    assert loaded.target_models["vocals"].hidden_size == 4
    assert [r.info.run_id for r in client.search_runs([experiment_id])] == [run.run_id]


def _log_the_shared_datasets(uri: str, experiment: str, root: str, barrier: Barrier) -> None:
    """One racer: its own run in the experiment; each round, the dataset every racer logs then."""
    os.environ["MLFLOW_TRACKING_URI"] = uri
    with start_run(experiment=experiment) as run:
        for round_ in range(ROUNDS):
            barrier.wait(timeout=30)
            run.log_dataset(Path(root), digest=f"digest-{round_}", name="shared")


def test_processes_logging_one_dataset_at_once_all_succeed(
    mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    """The server finds the dataset missing for several of them and inserts it for each; all but one
    insert fail on the unique constraint, and their retry finds the dataset."""
    experiment = "test-runs-dataset-race"
    client = MlflowClient(mlflow_server.uri)
    experiment_id = client.create_experiment(experiment)
    context = multiprocessing.get_context("spawn")  # no copy of this process's MLflow threads
    barrier = context.Barrier(RACERS)
    args = (mlflow_server.uri, experiment, str(tmp_path), barrier)
    racers = [context.Process(target=_log_the_shared_datasets, args=args) for _ in range(RACERS)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(timeout=300)
    assert [racer.exitcode for racer in racers] == [0] * RACERS
    runs = client.search_runs([experiment_id])
    assert len(runs) == RACERS
    for run in runs:
        assert run.info.status == "FINISHED"
        digests = sorted(d.dataset.digest for d in run.inputs.dataset_inputs)
        assert digests == [f"digest-{r}" for r in range(ROUNDS)]


# what MLflow's telemetry takes for a CI machine or a test, where it stays off by itself
CI_MARKERS = ("CI", "PYTEST_CURRENT_TEST", "GITHUB_ACTIONS", "GITLAB_CI", "JENKINS_URL", "BUILDKITE")


def test_train_sends_nothing_beyond_its_tracking_server_unless_telemetry_is_asked_for(
    tracking_uri: str, synth_root: Path, tmp_path: Path
) -> None:
    """Every request to another host goes to a recording proxy: `umx-tune train` sends none
    (MLflow's usage telemetry is off); with MLFLOW_DISABLE_TELEMETRY=false MLflow's config request
    reaches it (the recorder sees what it should)."""
    seen: list[bytes] = []
    proxy = socket.create_server(("127.0.0.1", 0))

    def record() -> None:
        while True:
            connection, _ = proxy.accept()
            with connection:
                seen.append(connection.recv(256).split(b"\r\n")[0])

    threading.Thread(target=record, daemon=True).start()
    url = f"http://127.0.0.1:{proxy.getsockname()[1]}"
    env = {k: v for k, v in cli_env().items() if k not in CI_MARKERS}
    env.update(HTTPS_PROXY=url, HTTP_PROXY=url, NO_PROXY="127.0.0.1,localhost")
    tiny = [arg for name, value in {**TINY, "epochs": 1}.items() for arg in (option_name(name), str(value))]
    command = [str(VENV_BIN / "umx-tune"), "train", *tiny, "--quiet", "--no-audio", "--experiment", "offline"]
    for telemetry, expected in (("", []), ("false", [b"CONNECT config.mlflow-telemetry.io:443"])):
        env.pop("MLFLOW_DISABLE_TELEMETRY", None)
        if telemetry:
            env["MLFLOW_DISABLE_TELEMETRY"] = telemetry
        done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert [line.rsplit(b" ", 1)[0] for line in seen] == expected, seen
        seen.clear()
    proxy.close()
