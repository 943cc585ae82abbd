"""The server roles of the docker deployment (docker/compose.yaml), as `umx-tune deploy ROLE`.

    umx-tune deploy mlflow-server              # MLflow tracking server, basic auth, PostgreSQL
    umx-tune deploy storage-proxy              # Optuna's gRPC proxy in front of the study storage

Everything secret comes from the environment (compose fills it from docker/.env), nothing from the
image. The deployment test (tests/test_deploy_postgres.py) starts the same commands with the same
variables against a real PostgreSQL, so what compose runs is what is tested.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import click

from umx_tune.errors import ConfigError

# variables the mlflow-server role reads (besides MLflow's own, listed in REQUIRED_FOR_MLFLOW)
BACKEND_STORE_ENV = "MLFLOW_BACKEND_STORE_URI"
AUTH_DATABASE_ENV = "MLFLOW_AUTH_DATABASE_URI"
ARTIFACTS_ENV = "MLFLOW_ARTIFACTS_DESTINATION"
WORKER_USERNAME_ENV = "UMX_TUNE_WORKER_USERNAME"
WORKER_PASSWORD_ENV = "UMX_TUNE_WORKER_PASSWORD"
# MLflow's own: the admin account it creates on first start, and the key of its CSRF protection
REQUIRED_FOR_MLFLOW = (
    "MLFLOW_AUTH_ADMIN_USERNAME",
    "MLFLOW_AUTH_ADMIN_PASSWORD",
    "MLFLOW_FLASK_SERVER_SECRET_KEY",
)
# the storage-proxy role: the RDB URL it serves (it alone holds the database password)
PROXY_STORAGE_ENV = "UMX_TUNE_PROXY_STORAGE"

# People's accounts read (READ, MLflow's own default) unless the admin grants more; none may read
# anonymously: basic auth rejects requests without valid credentials. The workers' account may
# log runs into every experiment and register models (EDIT on "*"), because workers must write
# into an experiment that the admin (or the UI) may have created. What an account creates, it manages.
DEFAULT_PERMISSION = "READ"
WORKER_PERMISSION = "EDIT"
WORKER_RESOURCES = ("experiment", "registered_model")

# docker/.env.example's values for secrets: a deployment started with one unchanged is refused
PLACEHOLDER = "CHANGE-ME"


def _require(env: Mapping[str, str], *names: str) -> dict[str, str]:
    """The variables' values; ConfigError for one unset, empty or holding docker/.env.example's
    placeholder (compose's ${VAR:?} refuses only empty values)."""
    missing = [name for name in names if not env.get(name)]
    if missing:
        raise ConfigError(
            f"set {', '.join(missing)} in the environment (docker/.env in the compose deployment)"
        )
    for name in names:
        placeholder = re.search(rf"{PLACEHOLDER}[\w-]*", env[name])
        if placeholder:
            raise ConfigError(
                f"{name} holds the placeholder {placeholder[0]!r} of docker/.env.example: replace every "
                f"{PLACEHOLDER} in docker/.env with a long random value"
            )
    return {name: env[name] for name in names}


def write_auth_config(folder: Path, auth_database_uri: str) -> Path:
    """basic_auth.ini for MLflow's basic-auth app; the admin account comes from MLflow's env vars.

    The file holds the auth database's URI (with its password), so it is written per start into a
    private folder instead of being baked into the image or committed.
    """
    path = folder / "basic_auth.ini"
    path.write_text(
        "[mlflow]\n"
        f"default_permission = {DEFAULT_PERMISSION}\n"
        f"database_uri = {auth_database_uri}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    path.chmod(0o600)
    return path


def ensure_user(auth_database_uri: str, username: str, password: str) -> None:
    """Create the (non-admin) account the workers log in with, or reset its password, and grant it
    WORKER_PERMISSION on every experiment and registered model.

    Done in the auth database before the server starts, so that the workers' account exists as
    soon as the server answers and no admin credentials ever reach a worker.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore()
    try:
        store.init_db(auth_database_uri)
        if store.has_user(username):
            store.update_user(username, password=password)
        else:
            store.create_user(username, password)
        for resource in WORKER_RESOURCES:  # an upsert: the same grant at every start
            store.grant_user_permission(username, resource, "*", WORKER_PERMISSION)
    except MlflowException as err:
        raise ConfigError(f"cannot set up MLflow account {username!r}: {err.message}") from None


def mlflow_server_command(host: str, port: int, workers: int, env: Mapping[str, str]) -> list[str]:
    """The `mlflow server` command line of the deployment."""
    backend = _require(env, BACKEND_STORE_ENV)[BACKEND_STORE_ENV]
    artifacts = env.get(ARTIFACTS_ENV) or "/mlflow/artifacts"
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--app-name",
        "basic-auth",
        "--backend-store-uri",
        backend,
        # artifacts go through the server (mlflow-artifacts:/), so workers need no storage keys
        "--artifacts-destination",
        artifacts,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]


@click.group()
def deploy() -> None:
    """Server roles of the docker deployment (docker/compose.yaml)."""


@deploy.command("mlflow-server")
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--port", type=int, default=5000, show_default=True)
@click.option("--workers", type=int, default=2, show_default=True, help="uvicorn worker processes")
def mlflow_server(host: str, port: int, workers: int) -> None:
    """Run `mlflow server --app-name basic-auth` on the PostgreSQL backend store.

    Reads MLFLOW_BACKEND_STORE_URI, MLFLOW_AUTH_DATABASE_URI, MLFLOW_ARTIFACTS_DESTINATION,
    MLflow's MLFLOW_AUTH_ADMIN_USERNAME/PASSWORD and MLFLOW_FLASK_SERVER_SECRET_KEY, and
    UMX_TUNE_WORKER_USERNAME/PASSWORD (the workers' account; optional).
    """
    env = dict(os.environ)
    auth_db = _require(env, AUTH_DATABASE_ENV, *REQUIRED_FOR_MLFLOW)[AUTH_DATABASE_ENV]
    command = mlflow_server_command(host, port, workers, env)
    if env.get(WORKER_USERNAME_ENV):
        worker = _require(env, WORKER_USERNAME_ENV, WORKER_PASSWORD_ENV)
        ensure_user(auth_db, worker[WORKER_USERNAME_ENV], worker[WORKER_PASSWORD_ENV])
    folder = Path(tempfile.mkdtemp(prefix="umx-tune-mlflow-auth-"))
    env["MLFLOW_AUTH_CONFIG_PATH"] = str(write_auth_config(folder, auth_db))
    # MLflow's job runner (half a dozen consumer processes) serves its GenAI jobs, which a study
    # never submits: off unless asked for
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    sys.stdout.flush()
    # exec: mlflow becomes this process, so `docker stop`'s SIGTERM reaches it directly
    os.execve(command[0], command, env)


@deploy.command("storage-proxy")
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--port", type=int, default=13000, show_default=True)
def storage_proxy(host: str, port: int) -> None:
    """Serve the Optuna storage UMX_TUNE_PROXY_STORAGE to workers as grpc://HOST:PORT.

    Workers then need no database password. Optuna's proxy has no authentication and passes no
    heartbeats: publish it only on a trusted network (see docker/README.md).
    """
    import optuna
    from optuna.storages import run_grpc_proxy_server

    url = _require(os.environ, PROXY_STORAGE_ENV)[PROXY_STORAGE_ENV]
    try:
        # get_storage wraps the RDB storage in Optuna's cache, as the proxy's docs recommend
        storage = optuna.storages.get_storage(url)
    except Exception as err:  # sqlalchemy's errors for an unreachable or misconfigured database
        raise ConfigError(f"cannot open Optuna storage {PROXY_STORAGE_ENV}: {type(err).__name__}") from None
    click.echo(f"umx-tune: Optuna storage proxy on {host}:{port}", err=True)
    run_grpc_proxy_server(storage, host=host, port=port)
