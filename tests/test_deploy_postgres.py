"""The compose deployment without Docker: what docker/compose.yaml runs, run as plain processes.

The deployment (tests/deployment.py, one per session): a real PostgreSQL initialised by
docker/postgres-init.sh and the `mlflow` service's command (basic auth, PostgreSQL backend store,
the workers' account); a worker as the `worker` service runs it. Three workers racing through the
`optuna` database, as `docker compose up --scale worker=3`, are the PostgreSQL case of
test_optimize.py's worker race (one test body over sqlite and PostgreSQL); they log to the session's
plain server, because the basic-auth server checks the password hash on every request (0.4 s each
on two cores), which would make six trials of three workers take minutes.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import TINY, assert_one_line_error, cli_env, free_port, run_main
from deployment import (
    ADMIN,
    MLFLOW_DB_PASSWORD,
    OPTUNA_DB_PASSWORD,
    SUPERUSER_PASSWORD,
    WORKER,
    Deployment,
    Postgres,
    worker_env,
)
from mlflow.tracking import MlflowClient

from umx_tune import tracking
from umx_tune.cli.options import option_name

pytestmark = pytest.mark.slow

# the study's base config: TINY sizes, one epoch, the fast BSSEval
BASE_ARGS = [
    arg
    for name, value in {**TINY, "epochs": 1, "evaluator": "fast", "device": "cpu"}.items()
    for arg in (option_name(name), str(value))
]


def test_a_worker_runs_a_study_through_the_deployment(
    deployment: Deployment,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The `worker` service's command with its environment (its account, UMX_TUNE_STORAGE), in this
    process: a one-entry grid study, read back through the server as the admin would in the UI."""
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"entries": {"h8": {"hidden_size": 8}}}))
    for name, value in worker_env(deployment, WORKER).items():
        monkeypatch.setenv(name, value)
    checkpoints = ["--checkpoint-dir", str(tmp_path / "checkpoints")]
    argv = ["optimize", "--study-name", "deploy", "--grid", str(grid), "--quiet", *checkpoints, *BASE_ARGS]
    done = run_main(capsys, *argv)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "study deploy (grid " in done.stdout

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN[1])
    client = MlflowClient(deployment.uri)
    experiment = client.get_experiment_by_name("umx-tune")
    runs = client.search_runs([experiment.experiment_id], f"tags.`{tracking.TAG_STUDY}` = 'deploy'")
    parents = [r for r in runs if tracking.TAG_PARENT_RUN not in r.data.tags]
    trials = [r for r in runs if tracking.TAG_PARENT_RUN in r.data.tags]
    assert len(parents) == 1 and [r.data.tags[tracking.TAG_GRID_ENTRY] for r in trials] == ["h8"]
    assert {r.info.status for r in runs} == {"FINISHED"}, [(r.info.run_name, r.info.status) for r in runs]
    assert trials[0].data.params["hidden_size"] == "8" and "SDR" in trials[0].data.metrics
    # the worker's account may describe the study: the tables are the parent's description
    assert parents[0].data.tags[tracking.TAG_NOTE].startswith("**1 trials** (1 complete); best SDR")
    study = optuna.load_study(study_name="deploy", storage=deployment.storage)
    assert [t.state for t in study.get_trials(deepcopy=False)] == [optuna.trial.TrialState.COMPLETE]


def test_worker_with_rejected_credentials_fails_once_and_clearly(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in worker_env(deployment, (WORKER[0], "wrong-password")).items():
        monkeypatch.setenv(name, value)
    started = time.monotonic()
    result = run_main(capsys, "optimize", "--study-name", "denied", "--grid", "seed", "--quiet", *BASE_ARGS)
    assert_one_line_error(result, "credentials", "MLFLOW_TRACKING_USERNAME")
    assert time.monotonic() - started < 90


def test_roles_reach_only_their_databases(postgres: Postgres) -> None:
    """postgres-init.sh: the Optuna password opens the study storage and nothing of MLflow's."""
    import sqlalchemy

    def connects(role: str, password: str, database: str) -> bool:
        engine = sqlalchemy.create_engine(postgres.url(role, password, database))
        try:
            with engine.connect() as connection:
                connection.execute(sqlalchemy.text("SELECT 1"))
            return True
        except sqlalchemy.exc.OperationalError:
            return False
        finally:
            engine.dispose()

    assert connects("optuna", OPTUNA_DB_PASSWORD, "optuna")
    assert connects("mlflow", MLFLOW_DB_PASSWORD, "mlflow")
    assert not connects("optuna", OPTUNA_DB_PASSWORD, "mlflow")
    assert not connects("optuna", OPTUNA_DB_PASSWORD, "mlflow_auth")
    assert not connects("mlflow", MLFLOW_DB_PASSWORD, "optuna")


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_storage_proxy_serves_the_study_storage(postgres: Postgres, tmp_path: Path) -> None:
    """The `optuna-storage` service's command: a client without database credentials writes
    through it into PostgreSQL."""
    import optuna
    from optuna.storages import GrpcStorageProxy

    port = free_port()
    url = postgres.url("optuna", OPTUNA_DB_PASSWORD, "optuna")
    command = ["umx-tune", "deploy", "storage-proxy", "--host", "127.0.0.1", "--port", str(port)]
    log = open(tmp_path / "proxy.log", "ab")  # noqa: SIM115  (closed with the process)
    proxy = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env=cli_env(UMX_TUNE_PROXY_STORAGE=url)
    )
    try:
        client = GrpcStorageProxy(host="127.0.0.1", port=port)
        client.wait_server_ready(timeout=120)
        study = optuna.create_study(study_name="through-proxy", storage=client)
        study.enqueue_trial({"x": 1.0})
        trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 2)})
        study.tell(trial, trial.params["x"] * 2)
        client.close()
        direct = optuna.load_study(study_name="through-proxy", storage=url)
        assert [t.value for t in direct.trials] == [2.0]
    finally:
        proxy.terminate()
        proxy.wait(timeout=30)


RACE_OPEN = """
import sys
from umx_tune.search.storage import HeartbeatSettings, open_storage
print("ready", flush=True)
sys.stdin.readline()  # all openers at once, their imports done
open_storage(sys.argv[1], HeartbeatSettings.every(20), lambda study, trial: None)
"""


def test_workers_opening_an_empty_storage_at_once(postgres: Postgres) -> None:
    """Every worker of a fresh deployment creates Optuna's tables at once; none may fail."""
    import sqlalchemy

    admin = sqlalchemy.create_engine(postgres.url("postgres", SUPERUSER_PASSWORD, "postgres"))
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(sqlalchemy.text("CREATE DATABASE optuna_race OWNER optuna"))
    admin.dispose()
    url = postgres.url("optuna", OPTUNA_DB_PASSWORD, "optuna_race")
    openers = [
        subprocess.Popen(
            ["python", "-c", RACE_OPEN, url],
            env=cli_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    assert all(opener.stdout.readline() == "ready\n" for opener in openers)
    for opener in openers:  # the go: one line each, as close together as four writes are
        opener.stdin.write("go\n")
        opener.stdin.flush()
    errors = [opener.communicate(timeout=300)[1] for opener in openers]
    assert [opener.returncode for opener in openers] == [0] * 4, "\n".join(errors)[-3000:]


def test_a_study_loses_nothing_when_its_database_drops_every_connection(
    postgres: Postgres, tracking_uri: str, tmp_path: Path
) -> None:
    """The chaos run's storage fault: pg_terminate_backend on every connection of the workers' role
    again and again while a trial trains. The pooled connections are replaced when next taken
    (pool_pre_ping), a trial whose statement was cut is queued again; every entry is done once."""
    import sqlalchemy

    admin = sqlalchemy.create_engine(postgres.url("postgres", SUPERUSER_PASSWORD, "postgres"))
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(sqlalchemy.text("CREATE DATABASE optuna_drop OWNER optuna"))
    url = postgres.url("optuna", OPTUNA_DB_PASSWORD, "optuna_drop")
    grid = tmp_path / "grid.yaml"
    grid.write_text("entries:\n  a: {hidden_size: 8}\n  b: {hidden_size: 12}\n")
    argv = ["umx-tune", "optimize", "--grid", str(grid), "--study-name", "dropped-connections"]
    argv += ["--storage", url]
    argv += ["--heartbeat-interval", "1", *BASE_ARGS, "--epochs", "3", "--no-audio", "--no-system-metrics"]
    worker = subprocess.Popen(
        argv, env=cli_env(), cwd=tmp_path, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    assert worker.stderr is not None
    for line in worker.stderr:  # the first trial trains, its heartbeat beating through the pool
        if "starts" in line:
            break
    query = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = 'optuna'"
    terminated = 0
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        for _ in range(40):  # again and again, so that some statement is cut while it runs
            terminated += int(connection.execute(sqlalchemy.text(query)).scalar() or 0)
            time.sleep(0.2)
    admin.dispose()
    assert terminated >= 1
    err = worker.stderr.read()
    assert worker.wait(timeout=300) == 0, err[-3000:]
    study = optuna.load_study(study_name="dropped-connections", storage=url)
    done = [t.user_attrs["grid_entry"] for t in study.get_trials() if t.state.name == "COMPLETE"]
    assert sorted(done) == ["a", "b"], [(t.number, t.state.name, t.user_attrs) for t in study.get_trials()]
