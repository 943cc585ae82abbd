"""Cores shared, not fought over: each run's torch threads, DataLoader workers and scoring pool come
from its share of the machine (umx_tune/cores.py), read back from the runs `umx-tune train` logs."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from conftest import TINY, VENV_BIN, assert_one_line_error, cli_env, run_cli, run_main

from umx_tune import cores, tracking

TINY_ARGS = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]


def train_run(capsys: pytest.CaptureFixture[str], *args: str) -> mlflow.entities.Run:
    """`umx-tune train` with TINY sizes and args; the run it logged."""
    result = run_main(capsys, "train", "--quiet", "--no-audio", "--no-system-metrics", *TINY_ARGS, *args)
    assert result.returncode == 0, result.stderr
    return newest_run()


def newest_run() -> mlflow.entities.Run:
    """The run `umx-tune train` started last in its default experiment."""
    client = mlflow.MlflowClient()
    runs = client.search_runs(
        [client.get_experiment_by_name(tracking.DEFAULT_EXPERIMENT).experiment_id],
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0]


def sharing_process(block: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """A process that enters `block` (a `with cores...` statement naming its value `held`), prints
    that value, and sleeps there until it is killed; with the line it printed."""
    body = "    print(held, flush=True)\n    time.sleep(600)"
    code = f"import time\nfrom umx_tune import cores\n{block}:\n{body}"
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    printed = process.stdout.readline().strip()
    yield process, printed
    process.kill()
    process.wait()


@pytest.fixture
def another_process(isolated_cache: Path) -> Iterator[subprocess.Popen]:
    """A second process registered on this machine, as a second study worker would be."""
    for process, _ in sharing_process("with cores.registered() as held"):
        yield process


@pytest.fixture
def core_holder(isolated_cache: Path) -> Iterator[subprocess.Popen]:
    """A process holding every core of the machine, as a run alone on it does, until it ends."""
    for process, held in sharing_process("with cores.reserved(0) as held"):
        assert held == str(cores.machine_cores())
        yield process


def test_alone_a_run_uses_every_core(
    tracking_uri: str, capsys: pytest.CaptureFixture[str], recwarn: pytest.WarningsRecorder
) -> None:
    run = train_run(capsys, "--nb-workers", "64")
    # PyTorch's "excessive worker creation ... might get DataLoader running slow or even freeze"
    assert not [w for w in recwarn if "excessive worker creation" in str(w.message)]
    cores_here = cores.machine_cores()
    assert run.data.params["threads"] == str(cores_here)
    # more DataLoader workers than the run's cores are capped, and the run says so
    assert run.data.tags[tracking.TAG_LOADER_WORKERS] == str(cores_here)
    assert run.data.params["nb_workers"] == "64"


def test_two_processes_share_the_cores(
    tracking_uri: str, capsys: pytest.CaptureFixture[str], another_process: subprocess.Popen
) -> None:
    run = train_run(capsys, "--nb-workers", "4")
    share = max(1, cores.machine_cores() // 2)
    assert run.data.params["threads"] == str(share)
    assert run.data.tags[tracking.TAG_LOADER_WORKERS] == str(min(4, share))


def test_a_killed_process_frees_its_share(
    tracking_uri: str, capsys: pytest.CaptureFixture[str], another_process: subprocess.Popen
) -> None:
    another_process.kill()  # kill -9: it never unregisters
    another_process.wait()
    assert another_process.pid not in cores.live_processes()
    assert train_run(capsys).data.params["threads"] == str(cores.machine_cores())


@pytest.mark.slow
def test_a_run_waits_for_a_free_core(tracking_uri: str, core_holder: subprocess.Popen) -> None:
    """Where other runs hold every core, `umx-tune train` says so and waits: it starts training (its
    params go out once it holds its cores) only when a core is free, here when the holder is killed;
    a `train --threads 1` meanwhile runs at once."""
    argv = [str(VENV_BIN / "umx-tune"), "train", "--no-audio", "--no-system-metrics", *TINY_ARGS]
    env = cli_env(MLFLOW_TRACKING_URI=tracking_uri)
    train = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    share = max(1, cores.machine_cores() // 2)
    assert train.stderr is not None
    for line in train.stderr:
        if cores.waiting_for(share) in line:
            break
    else:
        pytest.fail(f"`umx-tune train` ended ({train.wait()}) without waiting for a core")
    waiting = newest_run()
    assert waiting.info.status == "RUNNING" and "threads" not in waiting.data.params
    # a share given by hand is taken without waiting, while the other run still waits
    given = run_cli("train", "--threads", "1", "--no-audio", "--no-system-metrics", *TINY_ARGS, timeout=240)
    assert given.returncode == 0, given.stderr[-3000:]
    assert cores.waiting_for(1) not in given.stderr and newest_run().data.params["threads"] == "1"
    client = mlflow.MlflowClient()
    assert train.poll() is None and "threads" not in client.get_run(waiting.info.run_id).data.params
    core_holder.kill()  # kill -9: its locks go with it
    _, err = train.communicate(timeout=300)
    assert train.returncode == 0, err[-3000:]
    run = client.get_run(waiting.info.run_id)
    assert run.info.status == "FINISHED" and run.data.params["threads"] == str(share)


@pytest.mark.slow
def test_the_cores_of_a_stopped_process_are_free(tracking_uri: str, core_holder: subprocess.Popen) -> None:
    """A run suspended with every core (Ctrl-Z, SIGSTOP) stalls nobody: `umx-tune train` runs at once."""
    core_holder.send_signal(signal.SIGSTOP)
    result = run_cli("train", "--no-audio", "--no-system-metrics", *TINY_ARGS, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    share = max(1, cores.machine_cores() // 2)
    assert cores.waiting_for(share) not in result.stderr
    assert newest_run().data.params["threads"] == str(share)


def test_threads_given_or_from_the_environment_win(
    tracking_uri: str,
    capsys: pytest.CaptureFixture[str],
    another_process: subprocess.Popen,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert train_run(capsys, "--threads", "3").data.params["threads"] == "3"
    monkeypatch.setenv(cores.THREADS_ENV, "5")
    assert train_run(capsys).data.params["threads"] == "5"


def test_the_thread_count_changes_results_by_rounding_only(
    tracking_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Why `threads` is left out of the run signature: it changes losses only by float32 rounding (torch
    sums in another order; measured 8e-8 relative), where nb_workers changes nothing at all."""
    one, two = (train_run(capsys, "--threads", n) for n in ("1", "2"))
    assert one.data.tags[tracking.TAG_SIGNATURE] == two.data.tags[tracking.TAG_SIGNATURE]
    for metric in (tracking.TRAIN_LOSS, tracking.VALID_LOSS):
        assert one.data.metrics[metric] == pytest.approx(two.data.metrics[metric], rel=1e-6)


def test_a_bad_thread_environment_is_one_line(
    tracking_uri: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(cores.THREADS_ENV, "lots")
    started = time.time()
    for args in (("train", "--quiet"), ("optimize", "--grid", "seed"), ("evaluate", "--model", "x")):
        assert_one_line_error(run_main(capsys, *args), cores.THREADS_ENV, "'lots'")
    client = mlflow.MlflowClient()
    running = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        f"attributes.status = 'RUNNING' and attributes.start_time > {int(started * 1000)}",
    )
    assert not running


def test_a_worker_that_finds_every_core_held_waits_before_it_starts(
    tracking_uri: str, core_holder: subprocess.Popen, tmp_path: Path
) -> None:
    """`umx-tune optimize` that finds every core held says so and waits before anything starts (no
    storage, no study, no run), and past its --timeout ends without a trial."""
    grid = tmp_path / "grid.yaml"
    grid.write_text("entries:\n  h16: {hidden_size: 16}\n")
    storage = tmp_path / "optuna.db"
    began = time.monotonic()
    args = [
        "--grid",
        str(grid),
        "--study-name",
        "held",
        "--timeout",
        "3",
        "--storage",
        f"sqlite:///{storage}",
    ]
    result = run_cli("optimize", *args, *TINY_ARGS, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert time.monotonic() - began >= 3
    assert f"held: {cores.waiting_for(1)}" in result.stderr
    assert result.stdout == "study held: this worker ran trials: none (stopped: timeout)\n"
    assert not storage.exists()
