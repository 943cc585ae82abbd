"""The compose deployment (docker/compose.yaml) as plain processes, once per test session.

A real PostgreSQL (Debian's `postgresql`, as an unprivileged user, on 127.0.0.1) initialised by
docker/postgres-init.sh, and the `mlflow` service's command (`umx-tune deploy mlflow-server`: basic
auth, PostgreSQL backend store, the workers' account). conftest.py makes the fixtures session-wide,
so that test_deploy_postgres.py and the worker race of test_optimize.py share one deployment.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO, cli_env, free_port, wait_for_health

SUPERUSER_PASSWORD = "test-superuser-pw"
MLFLOW_DB_PASSWORD = "test-mlflow-db-pw"
OPTUNA_DB_PASSWORD = "test-optuna-db-pw"
ADMIN = ("admin", "test-admin-password-1")
WORKER = ("umx-worker", "test-worker-password-1")


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


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A throwaway PostgreSQL cluster on 127.0.0.1, set up by the deployment's init script."""
    with running_postgres() as pg:
        yield pg


@contextmanager
def running_postgres() -> Iterator[Postgres]:
    """The postgres fixture's cluster, for benchmarks too (benchmarks/chaos.py); pytest.skip where
    PostgreSQL cannot run here."""
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


@pytest.fixture(scope="session")
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


def worker_env(deployment: Deployment, credentials: tuple[str, str]) -> dict[str, str]:
    """The `worker` service's environment."""
    return {
        "MLFLOW_TRACKING_URI": deployment.uri,
        "MLFLOW_TRACKING_USERNAME": credentials[0],
        "MLFLOW_TRACKING_PASSWORD": credentials[1],
        "UMX_TUNE_STORAGE": deployment.storage,
    }
