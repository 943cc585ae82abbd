"""Shared fixtures: a real `mlflow server` on 127.0.0.1 and a tiny synthetic dataset, once per session."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from umx_tune.config import TrainConfig

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent

# Tiny sizes: a model with 16 hidden units on 2-second tracks trains in seconds on a CPU.
TINY = {
    "hidden_size": 16,
    "batch_size": 4,
    "samples_per_track": 2,
    "epochs": 2,
    "seq_dur": 1.0,
    "nfft": 1024,
    "nhop": 256,
    "synth_tracks": 2,
    "synth_duration": 2.0,
    "synth_seed": 0,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_health(uri: str, process: subprocess.Popen, timeout: float = 120.0) -> None:
    """Poll <uri>/health until it answers 200; fail if the server process exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"mlflow server at {uri} did not answer within {timeout} s")


@dataclass
class MlflowServer:
    uri: str
    root: Path
    process: subprocess.Popen


def start_mlflow_server(root: Path, backend_uri: str | None = None, port: int | None = None) -> MlflowServer:
    """A real `mlflow server` (sqlite backend unless backend_uri is given) serving artifacts from root."""
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    backend = backend_uri or f"sqlite:///{root / 'mlflow.db'}"
    log = open(root / "server.log", "ab")  # noqa: SIM115  (closed with the process)
    process = subprocess.Popen(
        [
            str(VENV_BIN / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            backend,
            "--artifacts-destination",
            str(root / "artifacts"),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=root,
        # no huey job consumers (15 worker threads in two processes): the tests run no server jobs
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    server = MlflowServer(uri=f"http://127.0.0.1:{port}", root=root, process=process)
    try:
        wait_for_health(server.uri, process)
    except Exception:
        stop_mlflow_server(server)
        raise
    return server


def stop_mlflow_server(server: MlflowServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.process.kill()


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Synthetic datasets and decoded audio go to a session temp folder, not the user's cache."""
    cache = tmp_path_factory.mktemp("umx-cache")
    old = os.environ.get("UMX_TUNE_CACHE")
    os.environ["UMX_TUNE_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("UMX_TUNE_CACHE", None)
    else:
        os.environ["UMX_TUNE_CACHE"] = old


@pytest.fixture(scope="session", autouse=True)
def away_from_the_checkout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The working directory is a session temp folder: commands run in this process (and processes
    started without a cwd) write their relative defaults there (umx-tune-checkpoints/, mlflow.db),
    not into the checkout."""
    folder = tmp_path_factory.mktemp("cwd")
    previous = Path.cwd()
    os.chdir(folder)
    yield folder
    os.chdir(previous)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    server = start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"))
    yield server
    stop_mlflow_server(server)


@pytest.fixture
def tracking_uri(mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point MLflow (this process and subprocesses) at the session's server."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    mlflow.set_tracking_uri(mlflow_server.uri)
    yield mlflow_server.uri
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="session")
def tiny_config() -> TrainConfig:
    return TrainConfig.from_dict({**TINY, "device": "cpu"})


@pytest.fixture(scope="session")
def synth_root(isolated_cache: Path, tiny_config: TrainConfig) -> Path:
    """The tiny synthetic dataset, built once per session."""
    from umx_tune.data.synth.lifecycle import ensure_synth_dataset

    return ensure_synth_dataset(tiny_config.synth_tracks, tiny_config.synth_duration, tiny_config.synth_seed)


# Set by mlflow.set_experiment / mlflow run; a stale one would pick the experiment of a child process.
MLFLOW_SCOPE_ENV = ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID")


def cli_env(**extra: str) -> dict[str, str]:
    """Environment for running umx-tune / mlflow subprocesses from the test venv."""
    env = {name: value for name, value in os.environ.items() if name not in MLFLOW_SCOPE_ENV}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def run_cli(
    *args: str, timeout: float = 300, cwd: Path | None = None, **env: str
) -> subprocess.CompletedProcess:
    """Run `umx-tune ARGS` as a real subprocess; returns the completed process (text output)."""
    exe = shutil.which("umx-tune", path=str(VENV_BIN)) or "umx-tune"
    return subprocess.run(
        [exe, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=cli_env(**env)
    )


@dataclass
class MainResult:
    returncode: int
    stdout: str
    stderr: str


def run_main(capsys: pytest.CaptureFixture[str] | None, *args: str) -> MainResult:
    """Run `umx-tune ARGS` in this process through the real entry point (`umx_tune.cli.main`).

    Cheaper than a subprocess (no second import of torch and MLflow) where the exit status and
    the output are what a test checks. Without capsys (in a module-scoped fixture) the output is
    caught by redirecting sys.stdout and sys.stderr.
    """
    from umx_tune.cli import main

    out, err = io.StringIO(), io.StringIO()
    if capsys is not None:
        capsys.readouterr()
    saved_env = dict(os.environ)  # mlflow.set_experiment exports MLFLOW_EXPERIMENT_ID
    try:
        with contextlib.ExitStack() as streams:
            if capsys is None:
                streams.enter_context(contextlib.redirect_stdout(out))
                streams.enter_context(contextlib.redirect_stderr(err))
            main(list(args))
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
    if capsys is None:
        return MainResult(code, out.getvalue(), err.getvalue())
    captured = capsys.readouterr()
    return MainResult(code, captured.out, captured.err)


ERROR_PREFIX = "umx-tune: error: "


def assert_one_line_error(
    result: MainResult | subprocess.CompletedProcess, *fragments: str, progress_before: bool = False
) -> str:
    """`umx-tune` failed as a user error: exit 2 and one line `umx-tune: error: …` holding every
    fragment, alone on stderr; with progress_before, after MLflow's artifact download progress
    (loading a model). Returns the error line."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-3000:]
    assert lines and lines[-1].startswith(ERROR_PREFIX), result.stderr[-3000:]
    before = lines[:-1]
    assert not before or (progress_before and not any("error" in line.lower() for line in before)), lines
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])
    return lines[-1]


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Block-sized tensors gain nothing from threads, and on a busy machine threads cost a lot."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# the compose deployment as processes: session-wide, for test_deploy_postgres.py and the worker race
from deployment import deployment, postgres  # noqa: E402, F401
