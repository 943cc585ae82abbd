"""Nothing lost under tracking faults and signals (issue 15, defects 1, 4, 5 and 6), on the real
pieces: the session's `mlflow server`, proxies in front of it that drop out or cut answers, worker
processes signalled as `docker stop` and `kill -9` signal them."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import mlflow
import numpy as np
import pytest
import soundfile as sf
from conftest import TINY, VENV_BIN, MlflowServer, assert_one_line_error, cli_env, free_port, run_main
from cutting_proxy import CuttingProxy
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from test_optimize import (
    BASE_ARGS,
    DroppingProxy,
    finish,
    running_trial_run,
    start_worker,
    study_runs,
    trials,
    wait_for,
    write_grid,
)

from umx_tune import tracking
from umx_tune.config import SAMPLE_RATE, TrainConfig
from umx_tune.search.plans import GRID_ENTRY_ATTR
from umx_tune.search.worker import REASON_ATTR, RETRIES_ATTR
from umx_tune.separation.folder import write_model_folder
from umx_tune.separation.model import build_separator, build_unmix
from umx_tune.tracking import retry
from umx_tune.tracking.runs import start_run

Capture = pytest.CaptureFixture[str]
RUN_ID = "0123456789abcdef0123456789abcdef"  # a run id no server has
CREATE_RUN = "/api/2.0/mlflow/runs/create"


def _experiment_runs(uri: str, experiment: str) -> list[mlflow.entities.Run]:
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


# ---------------------------------------------------------------------------------------------
# defect 4: a server that is not there fails a command in seconds


@pytest.mark.parametrize(
    "command",
    [
        ["separate", "--model", RUN_ID, "{tmp}/song.wav"],
        ["evaluate", "--model", RUN_ID],
        ["realtime", "--model", RUN_ID, "--log"],
    ],
)
def test_commands_without_a_server_fail_within_30_s(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Capture
) -> None:
    """MLflow's own HTTP retries would take about 250 s; the first call asks /health once."""
    sf.write(tmp_path / "song.wav", np.zeros((4410, 2), dtype="float32"), 44100)
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    started = time.monotonic()
    done = run_main(capsys, *(arg.format(tmp=tmp_path) for arg in command))
    assert time.monotonic() - started < 30
    assert_one_line_error(done, f"MLflow tracking server {uri} does not answer")


# ---------------------------------------------------------------------------------------------
# defect 1: tracking outages at a trial boundary, a cut runs/create


def test_a_cut_answer_to_runs_create_leaves_one_run(
    mlflow_server: MlflowServer, tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server made the run whose answer was cut: the repeat finds it instead of making a
    second, and no orphan stays RUNNING."""
    proxy = CuttingProxy(mlflow_server.uri)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", proxy.url)
    mlflow.set_tracking_uri(proxy.url)
    proxy.cut(CREATE_RUN)
    try:
        with start_run(experiment="test-cut-create", run_name="cut") as run:
            run.log_metrics({"m": 1.0})
    finally:
        proxy.close()
    assert proxy.cut_paths == [CREATE_RUN]
    (made,) = _experiment_runs(mlflow_server.uri, "test-cut-create")
    assert made.info.run_id == run.run_id and made.info.status == "FINISHED"


@pytest.mark.slow
def test_an_outage_at_a_trial_boundary_loses_no_entry(
    mlflow_server: MlflowServer, tracking_uri: str, tmp_path: Path
) -> None:
    """The server goes away for 10 s the moment the first entry is COMPLETE: the next run's start
    waits for it, and every entry is COMPLETE exactly once (before: the next FAILed at once, for
    good, and the study concluded 'complete')."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    proxy = DroppingProxy(int(mlflow_server.uri.rsplit(":", 1)[1]))
    grid = write_grid(tmp_path / "two.yaml", {"e0": {"epochs": 1}, "e1": {"epochs": 1}})
    worker = start_worker("boundary", storage, "--grid", grid, *BASE_ARGS, cwd=tmp_path, uri=proxy.uri)

    def first_complete() -> bool:
        if study_runs("boundary")[0] is None:  # the storage is still being set up
            return False
        return any(t.state == TrialState.COMPLETE for t in trials("boundary", storage))

    wait_for(first_complete, 300, "the first entry to complete")
    proxy.down()
    time.sleep(10)
    proxy.up()
    code, _, err = finish(worker)
    assert code == 0, err[-3000:]
    done = trials("boundary", storage)
    assert [(t.user_attrs[GRID_ENTRY_ATTR], t.state) for t in done] == [
        ("e0", TrialState.COMPLETE),
        ("e1", TrialState.COMPLETE),
    ]
    parent, children = study_runs("boundary")
    assert parent is not None and parent.data.tags[tracking.TAG_STUDY_STATE] == "complete"
    assert sorted(r.data.tags[tracking.TAG_GRID_ENTRY] for r in children) == ["e0", "e1"]
    assert {r.info.status for r in children} == {"FINISHED"}


@pytest.mark.slow
def test_an_entry_that_cannot_reach_tracking_is_queued_again_and_resumed(
    mlflow_server: MlflowServer,
    tracking_uri: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Capture,
) -> None:
    """An outage longer than a run's start waits (shortened here to 1 s): the worker fails the
    entry, queues it again without counting a retry, stops with one line and concludes nothing; a
    resume runs it. Its run, left RUNNING by the lost connection, is ended FAILED by the next run."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    proxy = DroppingProxy(int(mlflow_server.uri.rsplit(":", 1)[1]))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", proxy.uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # MLflow's own minutes of retries
    monkeypatch.setattr(retry, "OUTAGE_WAITS", (1,))
    mlflow.set_tracking_uri(proxy.uri)
    # a trains for 6 epochs: its first is logged while it trains, and the outage is met while it
    # trains on (with 2, a fast machine reached the scores, and the excerpt's warning, before the
    # outage's waits ran out: a last epoch goes with the scores)
    grid = write_grid(tmp_path / "two.yaml", {"a": {"epochs": 6}, "b": {"epochs": 1}})
    args = ["optimize", "--study-name", "unreachable", "--storage", storage, "--heartbeat-interval", "1"]
    args += ["--checkpoint-dir", str(tmp_path / "checkpoints"), *BASE_ARGS]

    def down_when_a_trains() -> None:
        wait_for(lambda: running_trial_run("unreachable") is not None, 300, "a to train")
        proxy.down()

    threading.Thread(target=down_when_a_trains, daemon=True).start()
    stopped = run_main(capsys, *args, "--grid", grid)
    assert_one_line_error(stopped, "MLflow did not answer", "a (trial 0) is queued again")
    proxy.up()
    lost = trials("unreachable", storage)
    assert [(t.user_attrs[GRID_ENTRY_ATTR], t.state) for t in lost] == [
        ("a", TrialState.FAIL),
        ("b", TrialState.WAITING),
        ("a", TrialState.WAITING),
    ]
    assert lost[0].user_attrs[REASON_ATTR].startswith("TrackingUnreachable: ")
    assert lost[2].user_attrs[RETRIES_ATTR] == 0  # not the entry's fault: no retry spent
    time.sleep(7)  # the lost run's heartbeat grace (interval 1 s)
    resumed = run_main(capsys, *args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    complete = Counter(
        t.user_attrs[GRID_ENTRY_ATTR] for t in trials("unreachable", storage) if t.state.name == "COMPLETE"
    )
    assert complete == Counter(a=1, b=1)
    parent, children = study_runs("unreachable")
    assert parent is not None and parent.data.tags[tracking.TAG_STUDY_STATE] == "complete"
    assert not [r for r in children if r.info.status == "RUNNING"]


# ---------------------------------------------------------------------------------------------
# defect 6: signals, runs of killed processes, nothing half-made by a refused command


def test_a_refused_study_leaves_no_new_storage(tracking_uri: str, tmp_path: Path, capsys: Capture) -> None:
    """Resuming a study that does not exist is refused before its sqlite file (or folder) is made."""
    db = tmp_path / "new" / "optuna.db"
    refused = run_main(capsys, "optimize", "--study-name", "nobody-yet", "--storage", f"sqlite:///{db}")
    assert_one_line_error(refused, "no study named 'nobody-yet' yet")
    assert not db.parent.exists()


def test_a_bad_resume_leaves_no_checkpoint_folder(tracking_uri: str, tmp_path: Path, capsys: Capture) -> None:
    client = MlflowClient()
    run = client.create_run(client.create_experiment("test-bad-resume"))  # a run without a checkpoint
    client.set_terminated(run.info.run_id)
    checkpoints = tmp_path / "checkpoints"
    refused = run_main(capsys, "train", "--resume", run.info.run_id, "--checkpoint-dir", str(checkpoints))
    assert_one_line_error(refused, f"no checkpoint to resume run {run.info.run_id}")
    assert not checkpoints.exists()


def test_a_streaming_block_of_0_is_refused_by_separate_and_realtime(tmp_path: Path, capsys: Capture) -> None:
    config = TrainConfig.from_dict({**TINY, "unidirectional": True})
    write_model_folder(build_separator(config, build_unmix(config), niter=0), tmp_path / "model")
    sf.write(tmp_path / "song.wav", np.zeros((4410, 2), dtype="float32"), SAMPLE_RATE)
    args = ["--model", str(tmp_path / "model"), str(tmp_path / "song.wav"), "--out", str(tmp_path / "out")]
    refused = run_main(capsys, "separate", *args, "--stream", "--block", "0")
    assert_one_line_error(refused, "block=0 samples must be a multiple of the model's STFT hop")
    assert not (tmp_path / "out").exists()
    measured = run_main(capsys, "realtime", "--model", str(tmp_path / "model"), "--block", "0")
    assert_one_line_error(measured, "block=0 samples must be a multiple of the model's STFT hop")


@pytest.mark.slow
def test_sigterm_cleans_up_as_ctrl_c(tracking_uri: str, tmp_path: Path) -> None:
    """`docker stop` signals the worker alone: its trial is queued again, its run ends KILLED with
    the reason, the parent KILLED with the study's state, exit 143 with one line."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    grid = write_grid(tmp_path / "one.yaml", {"long": {"epochs": 1000, "patience": 1000}})
    worker = start_worker("terminated", storage, "--grid", grid, *BASE_ARGS, cwd=tmp_path, uri=tracking_uri)
    wait_for(lambda: running_trial_run("terminated") is not None, 300, "the trial to train")
    os.kill(worker.pid, signal.SIGTERM)
    code, _, err = finish(worker, timeout=120)
    assert code == 143, err[-3000:]
    assert err.strip().splitlines()[-1] == "umx-tune: error: terminated"
    done = trials("terminated", storage)
    assert [t.state for t in done] == [TrialState.FAIL, TrialState.WAITING]
    assert done[0].user_attrs[REASON_ATTR] == "terminated (SIGTERM)"
    parent, children = study_runs("terminated")
    assert [(r.info.status, r.data.tags[tracking.TAG_ERROR]) for r in children] == [
        ("KILLED", "terminated (SIGTERM)")
    ]
    assert parent is not None and parent.info.status == "KILLED"
    assert parent.data.tags[tracking.TAG_STUDY_STATE] == "terminated (SIGTERM); 1 trials queued"


@pytest.mark.slow
def test_a_killed_train_run_is_ended_by_the_next_run(
    tracking_uri: str, tmp_path: Path, capsys: Capture
) -> None:
    """kill -9 leaves the run RUNNING; its heartbeat stops, and the next run started in its
    experiment ends it FAILED with the reason."""
    experiment = ["--experiment", "test-killed-train", "--heartbeat-interval", "1", *BASE_ARGS]
    command = [str(VENV_BIN / "umx-tune"), "train", *experiment, "--epochs", "1000", "--patience", "1000"]
    killed = subprocess.Popen(command, cwd=tmp_path, env=cli_env(MLFLOW_TRACKING_URI=tracking_uri))

    def training() -> list[mlflow.entities.Run]:
        runs = _experiment_runs(tracking_uri, "test-killed-train")
        return [r for r in runs if tracking.VALID_LOSS in r.data.metrics]

    wait_for(lambda: bool(training()), 300, "the run to train")
    killed.kill()
    killed.wait(timeout=30)
    time.sleep(7)  # its grace: 3 beats of 1 s, at least 6 s
    (lost,) = training()
    assert lost.info.status == "RUNNING"
    train = run_main(capsys, "train", *experiment, "--checkpoint-dir", str(tmp_path / "checkpoints"))
    assert train.returncode == 0, train.stderr[-3000:]
    ended = MlflowClient().get_run(lost.info.run_id)
    assert ended.info.status == "FAILED"
    assert ended.data.tags[tracking.TAG_ERROR].startswith("lost: its process stopped beating at ")
    statuses = sorted(r.info.status for r in _experiment_runs(tracking_uri, "test-killed-train"))
    assert statuses == ["FAILED", "FINISHED"]


# ---------------------------------------------------------------------------------------------
# defect 5: a quoted study name, through the entry point


@pytest.mark.slow
def test_a_quoted_study_name_keeps_its_guard_and_registers_once(
    tracking_uri: str, tmp_path: Path, capsys: Capture
) -> None:
    """`--study-name "o'brien"`: another storage is refused (no second parent), and a resume with
    --register-best finds the version it registered instead of adding one."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    grid = write_grid(tmp_path / "one.yaml", {"only": {"epochs": 1}})
    args = ["--study-name", "o'brien", "--register-best", "o'brien-best", "--quiet"]
    args += ["--checkpoint-dir", str(tmp_path / "checkpoints")]
    for _ in range(2):  # run, then resume
        done = run_main(capsys, "optimize", "--storage", storage, *args, "--grid", grid, *BASE_ARGS)
        assert done.returncode == 0, done.stderr[-3000:]
    elsewhere = f"sqlite:///{tmp_path / 'other.db'}"
    refused = run_main(capsys, "optimize", "--storage", elsewhere, *args, "--grid", grid, *BASE_ARGS)
    assert_one_line_error(refused, 'study "o\'brien" is kept in Optuna storage')
    versions = MlflowClient().search_model_versions('name = "o\'brien-best"')
    assert [v.version for v in versions] == ["1"]
    parent, children = study_runs_named("o'brien")
    assert len(parent) == 1 and len(children) == 1
    assert not (tmp_path / "other.db").exists()


def study_runs_named(name: str) -> tuple[list[mlflow.entities.Run], list[mlflow.entities.Run]]:
    """The parents and trial runs of a study whose name holds a quote."""
    client = MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, tracking.tag_equals(tracking.TAG_STUDY, name))
    parents = [r for r in runs if tracking.TAG_PARENT_RUN not in r.data.tags]
    return parents, [r for r in runs if tracking.TAG_PARENT_RUN in r.data.tags]
