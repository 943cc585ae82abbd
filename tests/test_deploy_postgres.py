"""The compose deployment without Docker: what docker/compose.yaml runs, run as plain processes.

A real PostgreSQL (Debian's `postgresql`, as an unprivileged user, on 127.0.0.1) initialised by
docker/postgres-init.sh; the `mlflow` service's command (`umx-tune deploy mlflow-server`:
basic auth, PostgreSQL backend store, the workers' account); three `umx-tune optimize` workers
sharing one grid study through the `optuna` database, as `docker compose up --scale worker=3`.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import REPO, TINY, cli_env, free_port, run_cli, wait_for_health

from umx_tune.cli.options import option_name

pytestmark = pytest.mark.slow

SUPERUSER_PASSWORD = "test-superuser-pw"
MLFLOW_DB_PASSWORD = "test-mlflow-db-pw"
OPTUNA_DB_PASSWORD = "test-optuna-db-pw"
ADMIN = ("admin", "test-admin-password-1")
WORKER = ("umx-worker", "test-worker-password-1")
# the study's base config: TINY sizes, one epoch, the fast BSSEval
BASE_ARGS = [
    arg
    for name, value in {**TINY, "epochs": 1, "evaluator": "fast", "device": "cpu"}.items()
    for arg in (option_name(name), str(value))
]
GRID = {"entries": {"h8": {"hidden_size": 8}, "h12": {"hidden_size": 12}, "h16": {"hidden_size": 16}}}


def postgres_bin() -> Path | None:
    """The bin folder of the newest PostgreSQL that Debian's packages installed."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    return found[-1].parent if found else None


@dataclass
class Postgres:
    port: int
    folder: Path
    process: subprocess.Popen

    def url(self, role: str, password: str, database: str) -> str:
        return f"postgresql+psycopg2://{role}:{password}@127.0.0.1:{self.port}/{database}"


def _as_user(user: str | None, argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root (CI's user): drop to an unprivileged account."""
    return ["runuser", "-u", user, "--", *argv] if user else argv


def _server_user() -> str | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):  # Debian's package creates `postgres`
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    pytest.skip("running as root and no unprivileged account to run PostgreSQL as")


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    """A throwaway PostgreSQL cluster on 127.0.0.1, set up by the deployment's init script."""
    bindir = postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (bash scripts/setup.sh test installs it)")
    user = _server_user()
    # not under pytest's tmp_path: its parents are private to root, the server's user cannot enter
    folder = Path(tempfile.mkdtemp(prefix="umx-tune-pg-"))
    pwfile = folder / "pw"
    pwfile.write_text(SUPERUSER_PASSWORD)
    if user:
        shutil.chown(folder, user)
        shutil.chown(pwfile, user)
    data, port = folder / "data", free_port()
    initdb = [
        str(bindir / "initdb"),
        "-D",
        str(data),
        "-U",
        "postgres",
        "--pwfile",
        str(pwfile),
        "-A",
        "scram-sha-256",
    ]
    subprocess.run(_as_user(user, initdb), check=True, capture_output=True, timeout=120)
    server = [
        str(bindir / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port),
        "-k", str(folder),  # the socket beside the data, not in /var/run/postgresql
    ]  # fmt: skip
    log = open(folder / "server.log", "ab")  # noqa: SIM115  (closed with the process)
    process = subprocess.Popen(_as_user(user, server), stdout=log, stderr=subprocess.STDOUT)
    pg = Postgres(port, folder, process)
    try:
        _wait_ready(bindir, port, process)
        env = cli_env(
            PATH=f"{bindir}:{os.environ['PATH']}",
            PGHOST="127.0.0.1",
            PGPORT=str(port),
            PGPASSWORD=SUPERUSER_PASSWORD,
            POSTGRES_USER="postgres",
            POSTGRES_DB="postgres",
            MLFLOW_DB_PASSWORD=MLFLOW_DB_PASSWORD,
            OPTUNA_DB_PASSWORD=OPTUNA_DB_PASSWORD,
        )
        init = REPO / "docker" / "postgres-init.sh"
        done = subprocess.run(["bash", str(init)], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        yield pg
    finally:
        process.terminate()
        process.wait(timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


def _wait_ready(bindir: Path, port: int, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"postgres exited with {process.returncode}")
        ready = subprocess.run(
            [str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)], capture_output=True
        )
        if ready.returncode == 0:
            return
        time.sleep(0.5)
    raise RuntimeError(f"postgres did not accept connections within {timeout} s")


@dataclass
class Deployment:
    postgres: Postgres
    uri: str
    storage: str


@pytest.fixture(scope="module")
def deployment(postgres: Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """The `mlflow` service's command, with the variables compose gives it."""
    root = tmp_path_factory.mktemp("mlflow-deploy")
    port = free_port()
    env = cli_env(
        MLFLOW_BACKEND_STORE_URI=postgres.url("mlflow", MLFLOW_DB_PASSWORD, "mlflow"),
        MLFLOW_AUTH_DATABASE_URI=postgres.url("mlflow", MLFLOW_DB_PASSWORD, "mlflow_auth"),
        MLFLOW_ARTIFACTS_DESTINATION=str(root / "artifacts"),
        MLFLOW_AUTH_ADMIN_USERNAME=ADMIN[0],
        MLFLOW_AUTH_ADMIN_PASSWORD=ADMIN[1],
        MLFLOW_FLASK_SERVER_SECRET_KEY="test-secret-key",
        UMX_TUNE_WORKER_USERNAME=WORKER[0],
        UMX_TUNE_WORKER_PASSWORD=WORKER[1],
    )
    command = ["umx-tune", "deploy", "mlflow-server", "--host", "127.0.0.1", "--port", str(port)]
    log = open(root / "server.log", "ab")  # noqa: SIM115  (closed with the process)
    process = subprocess.Popen(
        [*command, "--workers", "1"], stdout=log, stderr=subprocess.STDOUT, cwd=root, env=env
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        try:
            # first start: MLflow migrates two empty databases, which takes minutes on a busy machine
            wait_for_health(uri, process, timeout=600)
        except RuntimeError as err:
            raise RuntimeError(f"{err}: {(root / 'server.log').read_text()[-3000:]}") from None
        yield Deployment(postgres, uri, postgres.url("optuna", OPTUNA_DB_PASSWORD, "optuna"))
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def _worker_env(deployment: Deployment, credentials: tuple[str, str]) -> dict[str, str]:
    """The `worker` service's environment."""
    return {
        "MLFLOW_TRACKING_URI": deployment.uri,
        "MLFLOW_TRACKING_USERNAME": credentials[0],
        "MLFLOW_TRACKING_PASSWORD": credentials[1],
        "UMX_TUNE_STORAGE": deployment.storage,
    }


def test_three_workers_share_a_grid_study(
    deployment: Deployment, synth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump(GRID))
    argv = ["umx-tune", "optimize", "--study-name", "deploy", "--grid", str(grid), "--quiet", *BASE_ARGS]
    env = cli_env(**_worker_env(deployment, WORKER))
    workers = [
        subprocess.Popen(
            argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    outputs = [w.communicate(timeout=1800) for w in workers]
    for worker, (_, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err[-3000:]

    from mlflow.tracking import MlflowClient

    from umx_tune import tracking

    # read back through the server, as the admin would in the UI
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN[1])
    client = MlflowClient(deployment.uri)
    experiment = client.get_experiment_by_name("umx-tune")
    runs = client.search_runs([experiment.experiment_id], f"tags.`{tracking.TAG_STUDY}` = 'deploy'")
    trials = [r for r in runs if tracking.TAG_GRID_ENTRY in r.data.tags]
    entries = sorted(r.data.tags[tracking.TAG_GRID_ENTRY] for r in trials)
    assert entries == sorted(GRID["entries"]), "each grid entry runs exactly once"
    assert {r.info.status for r in runs} == {"FINISHED"}, [(r.info.run_name, r.info.status) for r in runs]
    assert len(runs) == len(trials) + 1, "one parent run and the trials"
    # every worker joined the same study; together they ran each trial once
    assert all("study deploy" in out for out, _ in outputs)
    _check_optuna_study(deployment.storage, len(GRID["entries"]))


def _check_optuna_study(storage_url: str, trials: int) -> None:
    import optuna

    study = optuna.load_study(study_name="deploy", storage=storage_url)
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert states == [optuna.trial.TrialState.COMPLETE] * trials


def test_worker_with_rejected_credentials_fails_once_and_clearly(
    deployment: Deployment, tmp_path: Path
) -> None:
    started = time.monotonic()
    result = run_cli(
        "optimize", "--study-name", "denied", "--grid", "seed", "--quiet", *BASE_ARGS,
        cwd=tmp_path, timeout=120, **_worker_env(deployment, (WORKER[0], "wrong-password")),
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("umx-tune: error: "), result.stderr[-3000:]
    assert "credentials" in lines[0] and "MLFLOW_TRACKING_USERNAME" in lines[0], lines[0]
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
import sys, time
from umx_tune.search.storage import HeartbeatSettings, open_storage
url, start = sys.argv[1], float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))  # all openers at the same moment, imports done
open_storage(url, HeartbeatSettings.every(20), lambda study, trial: None)
"""


def test_workers_opening_an_empty_storage_at_once(postgres: Postgres) -> None:
    """Every worker of a fresh deployment creates Optuna's tables at once; none may fail."""
    import sqlalchemy

    admin = sqlalchemy.create_engine(postgres.url("postgres", SUPERUSER_PASSWORD, "postgres"))
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(sqlalchemy.text("CREATE DATABASE optuna_race OWNER optuna"))
    admin.dispose()
    url = postgres.url("optuna", OPTUNA_DB_PASSWORD, "optuna_race")
    start = str(time.time() + 20)
    openers = [
        subprocess.Popen(
            ["python", "-c", RACE_OPEN, url, start], env=cli_env(), stderr=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    errors = [opener.communicate(timeout=300)[1] for opener in openers]
    assert [opener.returncode for opener in openers] == [0] * 4, "\n".join(errors)[-3000:]
