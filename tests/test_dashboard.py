"""`umx-tune dashboard`: optuna-dashboard on the storage `optimize` would use, read in a real headless
Chromium (test_browser.py's page), stopped by Ctrl-C; and its bad input.

The study is written with Optuna directly (no training): what the dashboard shows is the storage.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import VENV_BIN, assert_one_line_error, cli_env, free_port, run_main
from test_browser import page  # noqa: F401  (headless Chromium with an empty profile)

Capture = pytest.CaptureFixture[str]
STUDY = "dash-study"
# (lr, hidden_size) -> valid_loss: values and params the page must show, each trial its own
TRIALS = {(0.001, 8): 1.25, (0.01, 16): 0.75, (0.0001, 32): 2.5}


def write_study(folder: Path) -> None:
    """optuna.db beside the tracking store sqlite:///<folder>/mlflow.db: where `optimize` keeps it."""
    storage = f"sqlite:///{folder / 'optuna.db'}"
    study = optuna.create_study(study_name=STUDY, storage=storage)
    optuna.create_study(study_name="another-study", storage=storage)
    for lr, hidden_size in TRIALS:
        study.enqueue_trial({"lr": lr, "hidden_size": hidden_size})

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-4, 1e-2, log=True)
        return TRIALS[(lr, trial.suggest_int("hidden_size", 8, 32))]

    study.optimize(objective, n_trials=len(TRIALS))


@pytest.fixture
def tracking_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A local tracking setup (sqlite MLflow store) whose Optuna storage holds the study."""
    write_study(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("UMX_TUNE_STORAGE", raising=False)
    return tmp_path


def _interruptible() -> None:
    """In the child: Ctrl-C's default handling (a session started in the background ignores SIGINT,
    and a child would inherit that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def dashboard(tracking_folder: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    """`umx-tune dashboard --study-name STUDY` as a real process; (the process, the URL it printed)."""
    out = (tracking_folder / "stdout.txt").open("w+")
    process = subprocess.Popen(
        [str(VENV_BIN / "umx-tune"), "dashboard", "--study-name", STUDY, "--port", str(free_port())],
        stdout=out,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
        preexec_fn=_interruptible,
    )
    try:
        deadline = time.monotonic() + 120
        while not (url := re.search(r"http://\S+", (tracking_folder / "stdout.txt").read_text())):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.2)
        yield process, url.group(0)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        out.close()


@pytest.mark.slow
def test_dashboard_lists_the_study_with_its_trials_values_and_params(
    dashboard: tuple[subprocess.Popen, str],
    page: Any,  # noqa: F811  (the fixture imported above)
) -> None:
    process, url = dashboard
    assert url.endswith("/dashboard/studies/1"), url  # the named study's page (the first study made)
    page.goto(url)
    page.get_by_text(f"{STUDY} (id=1)").wait_for()
    page.goto(f"{url}/trials")  # the trial list: each trial's value and params
    for number, ((lr, hidden_size), value) in enumerate(TRIALS.items()):
        page.get_by_text(f"Trial {number}", exact=True).first.click()
        detail = page.get_by_text(f"Trial {number} (trial_id=")
        detail.wait_for()
        text = page.inner_text("body")
        assert f"\n{value:g}\n" in text, (number, text)
        assert f"lr {lr:g}" in text and f"hidden_size {hidden_size}" in text, (number, text)

    process.send_signal(signal.SIGINT)  # Ctrl-C: a clean stop, not a failure
    assert process.wait(timeout=30) == 0
    assert process.stderr is not None and process.stderr.read().strip().endswith("dashboard stopped")
    port = int(url.split(":")[2].split("/")[0])
    with pytest.raises(ConnectionRefusedError):  # nothing serves there any more
        socket.create_connection(("127.0.0.1", port), timeout=5)


def test_a_study_that_does_not_exist_is_one_line(tracking_folder: Path, capsys: Capture) -> None:
    done = run_main(capsys, "dashboard", "--study-name", "nope", "--port", str(free_port()))
    assert_one_line_error(done, "no study 'nope'", str(tracking_folder / "optuna.db"), STUDY, "another-study")
    assert done.stdout == ""


def test_a_port_in_use_is_one_line(tracking_folder: Path, capsys: Capture) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = run_main(capsys, "dashboard", "--study-name", STUDY, "--port", str(port))
    assert_one_line_error(done, f"127.0.0.1:{port}", "in use", "--port")
    assert done.stdout == ""


def test_no_storage_yet_is_one_line_and_creates_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("UMX_TUNE_STORAGE", raising=False)
    done = run_main(None, "dashboard")
    assert_one_line_error(done, f"no Optuna storage at {tmp_path / 'optuna.db'}", "--storage")
    assert not (tmp_path / "optuna.db").exists()
