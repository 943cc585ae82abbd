"""`umx-tune optimize` end to end: real `mlflow server`, real worker processes, tiny sizes.

Worker processes where processes matter (races between workers, SIGKILL, Ctrl-C, a server that
drops out); elsewhere the command runs in this process through its entry point (`run_main`).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from conftest import (
    TINY,
    VENV_BIN,
    MainResult,
    MlflowServer,
    assert_one_line_error,
    cli_env,
    free_port,
    run_cli,
    run_main,
)
from deployment import OPTUNA_DB_PASSWORD
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from test_report import markdown_tables

from umx_tune import cores, tracking
from umx_tune.cli.options import option_name
from umx_tune.config import TrainConfig
from umx_tune.search.plans import GRID_ENTRY_ATTR
from umx_tune.search.storage import STORAGE_ENV
from umx_tune.search.worker import REASON_ATTR

Capture = pytest.CaptureFixture[str]
TINY_ARGS = [arg for name, value in TINY.items() for arg in (option_name(name), str(value))]
BASE_ARGS = [*TINY_ARGS, "--device", "cpu", "--quiet"]


def tiny_base(**changes: object) -> list[str]:
    """TINY base options with some values changed."""
    values = {**TINY, **changes}
    return [arg for n, v in values.items() for arg in (option_name(n), str(v))] + [
        "--device",
        "cpu",
        "--quiet",
    ]


@pytest.fixture
def storage(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'optuna.db'}"


def optimize_args(study: str, storage: str, *args: str) -> list[str]:
    return ["optimize", "--study-name", study, "--storage", storage, *args]


def optimize_here(capsys: Capture, tmp_path: Path, study: str, storage: str, *args: str) -> MainResult:
    """`umx-tune optimize` in this process (checkpoints under tmp_path, not the working directory)."""
    checkpoints = ["--checkpoint-dir", str(tmp_path / "checkpoints")]
    return run_main(capsys, *optimize_args(study, storage, *args, *checkpoints))


def _interruptible() -> None:
    """In the child before exec: Ctrl-C's default handling. A test session started in the background
    (`cmd &`, nohup) ignores SIGINT, and a child inherits that, so a worker would never see it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_worker(study: str, storage: str, *args: str, cwd: Path, uri: str) -> subprocess.Popen:
    """A worker process in its own process group (so a test can signal it and its children)."""
    command = [str(VENV_BIN / "umx-tune"), *optimize_args(study, storage, *args)]
    env = cli_env(MLFLOW_TRACKING_URI=uri)
    return subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=_interruptible,
    )


def finish(process: subprocess.Popen, timeout: float = 600) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def study_runs(study: str) -> tuple[Run | None, list[Run]]:
    """The study's parent run and its trial runs, from MLflow alone."""
    client = MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, filter_string=f"tags.`{tracking.TAG_STUDY}` = '{study}'")
    parents = [r for r in runs if tracking.TAG_PARENT_RUN not in r.data.tags]
    assert len(parents) <= 1, "a study has one parent run"
    children = [r for r in runs if tracking.TAG_PARENT_RUN in r.data.tags]
    return (parents[0] if parents else None), children


def trials(study: str, storage: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)


def write_grid(path: Path, entries: dict[str, dict[str, object]]) -> str:
    lines = ["entries:"] + [f"  {name}: {json.dumps(values)}" for name, values in entries.items()]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def running_trial_run(study: str, entry: str | None = None) -> Run | None:
    """A trial run of the study (of that grid entry) that is training (has logged an epoch: one
    before its last, which goes out with the scores)."""
    _, children = study_runs(study)
    for run in children:
        if entry is not None and run.data.tags.get(tracking.TAG_GRID_ENTRY) != entry:
            continue
        if run.info.status == "RUNNING" and tracking.VALID_LOSS in run.data.metrics:
            return run
    return None


def assert_nothing_running(study: str, storage: str) -> None:
    assert not [t for t in trials(study, storage) if t.state == TrialState.RUNNING]
    parent, children = study_runs(study)
    assert parent is not None and parent.info.status != "RUNNING"
    assert not [r.info.run_name for r in children if r.info.status == "RUNNING"]


# ---------------------------------------------------------------------------------------------
# grid replay


# The shipped seed grid's content is pinned by test_search_plans; the race replays a grid of its
# shape at tiny sizes, every key varied.
GRID_KEYS = ("batch_size", "nb_workers", "hidden_size", "samples_per_track", "epochs")
RACE_GRID = {
    "open-unmix": (4, 0, 8, 2, 1),
    "open-unmix2": (2, 0, 8, 2, 1),
    "open-unmix3": (4, 0, 12, 2, 1),
    "open-unmix4": (4, 0, 12, 2, 2),
    "open-unmix5": (2, 1, 12, 4, 2),
    "open-unmix6": (2, 0, 12, 4, 1),
}


@dataclass
class RaceStorage:
    """The Optuna storage the racing workers share, and how they are told it."""

    name: str
    url: str
    worker_env: dict[str, str]
    worker_args: list[str]


@pytest.fixture(params=["sqlite", "postgresql"])
def race_storage(request: pytest.FixtureRequest, tmp_path: Path) -> RaceStorage:
    """sqlite beside this test (--storage), or the deployment's PostgreSQL `optuna` database given as
    compose gives it (UMX_TUNE_STORAGE). Both with the session's MLflow server: the deployment's own
    (basic auth) is test_deploy_postgres's."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'optuna.db'}"
        return RaceStorage("sqlite", url, {}, ["--storage", url])
    postgres = request.getfixturevalue("postgres")
    url = postgres.url("optuna", OPTUNA_DB_PASSWORD, "optuna")
    return RaceStorage("postgresql", url, {STORAGE_ENV: url}, [])


@pytest.mark.slow
def test_three_workers_replay_a_grid_once(
    race_storage: RaceStorage, tracking_uri: str, tmp_path: Path
) -> None:
    """Three concurrent workers share one grid study: six trials, each entry once, exact values,
    one conclusion (best trial, plots, registered model, the tables as the parent's description),
    and the machine's cores shared: never more trials training at once than cores for them."""
    study = f"race-{race_storage.name}"  # MLflow refuses one study name over two storages
    entries = {name: dict(zip(GRID_KEYS, values, strict=True)) for name, values in RACE_GRID.items()}
    grid = write_grid(tmp_path / "race.yaml", entries)
    args = ["--study-name", study, "--grid", grid, "--register-best", f"umx-{study}-best"]
    argv = [str(VENV_BIN / "umx-tune"), "optimize", *args, *race_storage.worker_args, *BASE_ARGS]
    env = cli_env(MLFLOW_TRACKING_URI=tracking_uri, **race_storage.worker_env)
    results = run_watching_cpu([argv] * 3, tmp_path, env, timeout=900)
    done = trials(study, race_storage.url)
    parent, children = study_runs(study)
    assert parent is not None
    joined = [r for r in results if f"study {study} (grid {grid}, " in r.out]
    for result in results:
        assert result.code == 0, result.err[-3000:]
    for result in joined:
        assert f"parent run: {parent.info.run_id}" in result.out
    # a worker that finds every core held by its study's workers waits before its imports (torch,
    # MLflow: seconds of CPU) and ends when the study has nothing left: on 2 cores, the third
    standing_by = [r for r in results if r not in joined]
    assert len(standing_by) == max(0, 3 - cores.machine_cores() // max(1, cores.machine_cores() // 3))
    for result in standing_by:
        assert result.out.startswith(f"study {study}: this worker ran trials: none (stopped: done"), result
        assert result.cpu_seconds < 2.0, result
    assert [t.state for t in done] == [TrialState.COMPLETE] * 6
    assert [t.user_attrs[GRID_ENTRY_ATTR] for t in done] == list(RACE_GRID)  # enqueued once, in order
    assert parent.info.status == "FINISHED"
    assert parent.data.tags[tracking.TAG_STUDY_STATE] == "complete"
    assert sorted(r.data.tags[tracking.TAG_GRID_ENTRY] for r in children) == sorted(RACE_GRID)
    assert sorted(int(r.data.tags[tracking.TAG_TRIAL_NUMBER]) for r in children) == list(range(6))
    for run in children:
        check_grid_trial_run(run, parent.info.run_id)
    check_cores_shared(children, workers=3)
    check_study_summary(parent, children, f"umx-{study}-best")
    check_study_description(parent, children)


@dataclass
class Finished:
    """A finished process: its exit status, output, and the CPU seconds it had used when last seen."""

    code: int
    out: str
    err: str
    cpu_seconds: float


def run_watching_cpu(
    argvs: list[list[str]], cwd: Path, env: dict[str, str], timeout: float
) -> list[Finished]:
    """Run the commands at once to their end, reading each one's CPU time (user + system, from
    /proc) every 0.2 s while it runs."""
    logs = [(cwd / f"process{i}.out", cwd / f"process{i}.err") for i in range(len(argvs))]
    processes = [
        subprocess.Popen(argv, cwd=cwd, env=env, stdout=out.open("w"), stderr=err.open("w"), text=True)
        for argv, (out, err) in zip(argvs, logs, strict=True)
    ]
    cpu = [0.0] * len(processes)
    ends = time.monotonic() + timeout
    while any(p.poll() is None for p in processes):
        assert time.monotonic() < ends, "the processes did not end in time"
        for i, process in enumerate(processes):
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
                cpu[i] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        time.sleep(0.2)
    return [
        Finished(p.returncode, out.read_text(), err.read_text(), seconds)
        for p, (out, err), seconds in zip(processes, logs, cpu, strict=True)
    ]


@pytest.mark.slow
def test_study_workers_give_a_waiting_train_a_core(tracking_uri: str, tmp_path: Path) -> None:
    """Workers keep their cores from trial to trial, but not from another run: a `umx-tune train`
    started while a study's workers hold every core (on 2 cores, 2 workers) waits only until a
    worker's next trial, and trains while the study goes on."""
    grid = write_grid(tmp_path / "grid.yaml", {f"h{h}": {"hidden_size": h} for h in range(8, 40, 4)})
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study, workers = "give-way", cores.machine_cores()
    args = ["--study-name", study, "--grid", grid, "--storage", storage, *BASE_ARGS]
    env = cli_env(MLFLOW_TRACKING_URI=tracking_uri)
    optimizers = [
        subprocess.Popen([str(VENV_BIN / "umx-tune"), "optimize", *args], cwd=tmp_path, env=env)
        for _ in range(workers)
    ]
    wait_for(lambda: running(study, storage) == workers, timeout=240, what=f"{workers} trials running")
    began = int(time.time() * 1000)
    train = run_cli("train", "--no-audio", "--no-system-metrics", *TINY_ARGS, timeout=600, cwd=tmp_path)
    assert train.returncode == 0, train.stderr[-3000:]
    for optimizer in optimizers:
        assert optimizer.wait(timeout=600) == 0
    if workers < 3:  # its share is a core, and every core was held
        assert cores.waiting_for(1) in train.stderr
    client = MlflowClient()
    _, children = study_runs(study)
    trained = next(
        run
        for run in client.search_runs([children[0].info.experiment_id])
        if tracking.TAG_STUDY not in run.data.tags and run.info.start_time >= began
    )
    assert trained.data.params["threads"] == str(max(1, cores.machine_cores() // (workers + 1)))
    first_epoch = min(
        m.timestamp for m in client.get_metric_history(trained.info.run_id, tracking.TRAIN_LOSS)
    )
    assert first_epoch < max(run.info.end_time for run in children)  # not after the study's end


def running(study: str, storage: str) -> int:
    """How many of the study's trials run (0 while the storage or the study is not made yet)."""
    try:
        return sum(t.state == TrialState.RUNNING for t in trials(study, storage))
    except KeyError:  # Optuna: no such study
        return 0


def check_grid_trial_run(run: Run, parent_run_id: str) -> None:
    """A grid trial run: named and tagged after its entry, with exactly the entry's values."""
    entry = run.data.tags[tracking.TAG_GRID_ENTRY]
    assert run.info.run_name == entry and run.info.status == "FINISHED"
    assert run.data.tags[tracking.TAG_TRIAL_STATE] == "COMPLETE"
    assert run.data.tags[tracking.TAG_PARENT_RUN] == parent_run_id
    expected = dict(zip(GRID_KEYS, RACE_GRID[entry], strict=True))
    for key, value in expected.items():
        assert run.data.params[key] == str(value), (entry, key)
    # everything else is the base config given on the command line
    for key in ("seq_dur", "nfft", "synth_tracks", "lr"):
        assert run.data.params[key] == str(TrainConfig.from_dict(TINY).to_params()[key]), key
    assert json.loads(run.data.tags[tracking.TAG_TRIAL_PARAMS]) == expected
    assert set(json.loads(run.data.tags[tracking.TAG_TRIAL_DISTRIBUTIONS])) == set(GRID_KEYS)
    history = MlflowClient().get_metric_history(run.info.run_id, tracking.TRIAL_INTERMEDIATE)
    assert sorted(m.step for m in history) == list(range(1, expected["epochs"] + 1))


def check_cores_shared(children: list[Run], workers: int) -> None:
    """Each trial trained on the default rule's share (cores // workers, umx_tune/cores.py), and no
    more trial runs were open at once than shares fit in the cores: a worker waits for a free core
    before it claims a trial (without that, on 2 cores the third worker's trial ran beside two)."""
    share = max(1, cores.machine_cores() // workers)
    assert {run.data.params["threads"] for run in children} == {str(share)}
    edges = sorted(
        edge for run in children for edge in ((run.info.start_time, 1), (run.info.end_time, -1))
    )  # at one millisecond an end sorts before a start: the run ended before the next began
    open_runs = list(itertools.accumulate(step for _, step in edges))
    assert max(open_runs) <= max(1, cores.machine_cores() // share), edges


def check_study_summary(parent: Run, children: list[Run], registered: str) -> None:
    """Best trial, plots and the registered model on the parent run."""
    tags = parent.data.tags
    best = next(r for r in children if r.info.run_id == tags[tracking.TAG_BEST_RUN])
    assert tags[tracking.TAG_BEST_TRIAL] == best.data.tags[tracking.TAG_TRIAL_NUMBER]
    assert tags[tracking.TAG_BEST_PARAM_PREFIX + "hidden_size"] == best.data.params["hidden_size"]
    assert parent.data.metrics[tracking.BEST_VALUE] == min(
        r.data.metrics[tracking.TRIAL_VALUE] for r in children
    )
    plots = {a.path for a in MlflowClient().list_artifacts(parent.info.run_id, "plots")}
    for name in ("optimization_history", "intermediate_values", "param_importances", "parallel_coordinate"):
        assert f"plots/{name}.png" in plots
    versions = MlflowClient().search_model_versions(f"name = '{registered}'")
    assert [v.run_id for v in versions] == [best.info.run_id]
    assert tags[tracking.TAG_REGISTERED_MODEL] == f"{registered}/1"


def check_study_description(parent: Run, children: list[Run]) -> None:
    """README ("Comparing runs"): when a study ends, its tables become the parent run's description
    (`mlflow.note.content`, shown on the run's page in the MLflow UI), scores first."""
    note = parent.data.tags[tracking.TAG_NOTE]
    assert note.startswith("**6 trials** (6 complete); best SDR "), note[:200]
    scores, training = markdown_tables(note)
    assert list(scores) == list(training) == list(RACE_GRID)  # grid entries in natural order
    assert "#### separation of vocals (BSSEval v4, dB)" in note and "#### training" in note
    for run in children:
        entry = run.data.tags[tracking.TAG_GRID_ENTRY]
        assert float(scores[entry]["SDR"]) == pytest.approx(run.data.metrics["SDR"], abs=5e-4), entry
        assert training[entry]["hidden_size"] == run.data.params["hidden_size"], entry
    best = max(children, key=lambda r: r.data.metrics["SDR"])
    assert f"dB: **{best.data.tags[tracking.TAG_GRID_ENTRY]}**." in note.splitlines()[0]


@pytest.mark.slow
def test_search_prunes_on_validation_loss(
    tracking_uri: str, storage: str, tmp_path: Path, capsys: Capture
) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(
        "params:\n"
        "  lr: {type: categorical, choices: [1.0e-6, 0.001, 0.01]}\n"
        "  hidden_size: {type: int, low: 8, high: 24, step: 8}\n"
    )
    args = ["--search", str(space), "--n-trials", "4", "--sampler", "random", "--sampler-seed", "1"]
    args += ["--pruner", "median", "--pruner-startup-trials", "1", *tiny_base(epochs=2)]
    result = optimize_here(capsys, tmp_path, "prune", storage, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    done = trials("prune", storage)
    assert len(done) == 4
    pruned = [t for t in done if t.state == TrialState.PRUNED]
    assert pruned, [(t.params, t.intermediate_values) for t in done]
    _, children = study_runs("prune")
    by_number = {int(r.data.tags[tracking.TAG_TRIAL_NUMBER]): r for r in children}
    for trial in pruned:
        run = by_number[trial.number]
        assert run.info.status == "KILLED"
        assert run.data.tags[tracking.TAG_TRIAL_STATE] == "PRUNED"
        epoch = run.data.tags[tracking.TAG_PRUNED_EPOCH]
        assert run.data.tags[tracking.TAG_ERROR] == f"pruned at epoch {epoch}"
        assert int(epoch) == max(trial.intermediate_values)
    for trial in done:  # Optuna's trial is mirrored: params, distributions, intermediate values
        run = by_number[trial.number]
        assert json.loads(run.data.tags[tracking.TAG_TRIAL_PARAMS]) == trial.params
        history = MlflowClient().get_metric_history(run.info.run_id, tracking.TRIAL_INTERMEDIATE)
        assert {m.step: m.value for m in history} == pytest.approx(trial.intermediate_values)


# ---------------------------------------------------------------------------------------------
# faults


@pytest.mark.slow
def test_diverging_and_broken_trials_fail_and_the_study_goes_on(
    tracking_uri: str, storage: str, tmp_path: Path, capsys: Capture
) -> None:
    grid = write_grid(
        tmp_path / "faulty.yaml",
        {
            "diverges": {"lr": 1.0e30},
            "broken": {"root": str(tmp_path / "no-such-musdb")},
            "fine": {"hidden_size": 8},
        },
    )
    result = optimize_here(capsys, tmp_path, "faulty", storage, "--grid", grid, *tiny_base(epochs=1))
    assert result.returncode == 0, result.stderr[-3000:]
    states = {t.user_attrs[GRID_ENTRY_ATTR]: t for t in trials("faulty", storage)}
    assert {k: t.state for k, t in states.items()} == {
        "diverges": TrialState.FAIL,
        "broken": TrialState.FAIL,
        "fine": TrialState.COMPLETE,
    }
    assert states["diverges"].user_attrs[REASON_ATTR].startswith("TrainingDiverged: ")
    assert states["broken"].user_attrs[REASON_ATTR].startswith("DatasetError: ")
    _, children = study_runs("faulty")
    runs = {r.data.tags[tracking.TAG_GRID_ENTRY]: r for r in children}
    for name in ("diverges", "broken"):
        assert runs[name].info.status == "FAILED"
        assert runs[name].data.tags[tracking.TAG_TRIAL_STATE] == "FAIL"
        assert runs[name].data.tags[tracking.TAG_ERROR] == states[name].user_attrs[REASON_ATTR]
    assert_nothing_running("faulty", storage)


@pytest.mark.slow
def test_killed_worker_is_detected_and_grid_resumes_exactly_the_unfinished(
    tracking_uri: str, storage: str, tmp_path: Path, capsys: Capture
) -> None:
    grid = write_grid(
        tmp_path / "three.yaml",
        {"first": {"epochs": 1}, "long": {"epochs": 3}, "last": {"epochs": 1}},
    )
    beat = ["--heartbeat-interval", "1"]
    worker = start_worker(
        "killed", storage, "--grid", grid, *beat, *BASE_ARGS, cwd=tmp_path, uri=tracking_uri
    )
    wait_for(lambda: running_trial_run("killed", "long") is not None, 600, "the long trial to train")
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(timeout=30)
    lost = running_trial_run("killed", "long")
    assert lost is not None

    result = optimize_here(capsys, tmp_path, "killed", storage, *beat)
    assert result.returncode == 0, result.stderr[-3000:]
    done = trials("killed", storage)
    complete = Counter(t.user_attrs[GRID_ENTRY_ATTR] for t in done if t.state == TrialState.COMPLETE)
    assert complete == Counter(first=1, long=1, last=1)
    failed = [t for t in done if t.state == TrialState.FAIL]
    assert [t.user_attrs[GRID_ENTRY_ATTR] for t in failed] == ["long"]
    _, children = study_runs("killed")
    assert Counter(r.data.tags[tracking.TAG_GRID_ENTRY] for r in children) == Counter(first=1, long=2, last=1)
    dead = MlflowClient().get_run(lost.info.run_id)
    assert dead.info.status == "FAILED" and dead.data.tags[tracking.TAG_TRIAL_STATE] == "FAIL"
    assert "no heartbeat" in dead.data.tags[tracking.TAG_ERROR]
    assert_nothing_running("killed", storage)


@pytest.mark.slow
def test_killed_search_resumes_within_its_budget(
    tracking_uri: str, storage: str, tmp_path: Path, capsys: Capture
) -> None:
    space = tmp_path / "space.yaml"
    space.write_text("params:\n  hidden_size: {type: int, low: 8, high: 32, step: 8}\n")
    args = ["--search", str(space), "--n-trials", "2", "--pruner", "none", "--heartbeat-interval", "1"]
    worker = start_worker("budget", storage, *args, *tiny_base(epochs=3), cwd=tmp_path, uri=tracking_uri)
    wait_for(lambda: running_trial_run("budget") is not None, 300, "a trial to train")
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(timeout=30)
    result = optimize_here(capsys, tmp_path, "budget", storage, "--heartbeat-interval", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    done = trials("budget", storage)
    assert Counter(t.state for t in done) == Counter({TrialState.COMPLETE: 2, TrialState.FAIL: 1})
    assert_nothing_running("budget", storage)


@pytest.mark.slow
def test_ctrl_c_marks_the_trial_and_exits_130(tracking_uri: str, storage: str, tmp_path: Path) -> None:
    # long enough that the interrupt always lands in training, whatever the machine
    grid = write_grid(tmp_path / "one.yaml", {"long": {"epochs": 1000, "patience": 1000}})
    worker = start_worker("interrupted", storage, "--grid", grid, *BASE_ARGS, cwd=tmp_path, uri=tracking_uri)
    wait_for(lambda: running_trial_run("interrupted") is not None, 300, "the trial to train")
    os.killpg(worker.pid, signal.SIGINT)
    code, _, err = finish(worker, timeout=120)
    assert code == 130, err[-3000:]
    assert err.strip().splitlines()[-1] == "umx-tune: error: interrupted"
    done = trials("interrupted", storage)
    assert [t.state for t in done] == [TrialState.FAIL, TrialState.WAITING]  # queued again for a resume
    assert done[0].user_attrs[REASON_ATTR] == "interrupted (Ctrl-C)"
    parent, children = study_runs("interrupted")
    assert [r.info.status for r in children] == ["KILLED"]
    assert children[0].data.tags[tracking.TAG_TRIAL_STATE] == "FAIL"
    assert parent is not None and parent.info.status == "KILLED"


class DroppingProxy:
    """A TCP forwarder in front of the tracking server that can drop out: while dropped, its port
    refuses connections and every open connection is cut, as when the server goes away."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.port = free_port()
        self.connections: list[socket.socket] = []
        self.listener: socket.socket | None = None
        self.up()

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        assert self.listener is not None
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked in its thread
        self.listener.close()
        for conn in self.connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
                conn.close()
        self.connections.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by down()
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            self.connections += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


@pytest.mark.slow
def test_a_server_that_drops_for_seconds_loses_no_result(
    mlflow_server: MlflowServer, tracking_uri: str, storage: str, tmp_path: Path
) -> None:
    proxy = DroppingProxy(int(mlflow_server.uri.rsplit(":", 1)[1]))
    grid = write_grid(tmp_path / "one.yaml", {"only": {"epochs": 3}})
    worker = start_worker("drop", storage, "--grid", grid, *BASE_ARGS, cwd=tmp_path, uri=proxy.uri)
    wait_for(lambda: running_trial_run("drop") is not None, 600, "the trial to train")
    proxy.down()
    time.sleep(5)
    proxy.up()
    code, _, err = finish(worker)
    assert code == 0, err[-3000:]
    _, children = study_runs("drop")
    assert [r.info.status for r in children] == ["FINISHED"]
    run = children[0]
    assert run.data.tags[tracking.TAG_TRIAL_STATE] == "COMPLETE"
    history = MlflowClient().get_metric_history(run.info.run_id, tracking.VALID_LOSS)
    assert sorted(m.step for m in history) == [1, 2, 3]
    assert tracking.TRIAL_VALUE in run.data.metrics and "SDR" in run.data.metrics
    assert [t.state for t in trials("drop", storage)] == [TrialState.COMPLETE]


# ---------------------------------------------------------------------------------------------
# starting: races, bad input, an absent server


@pytest.mark.slow
def test_workers_starting_together_set_the_study_up_once(
    tracking_uri: str, storage: str, tmp_path: Path
) -> None:
    """--timeout stops each worker before its first trial: only the set-up races."""
    grid = write_grid(tmp_path / "g.yaml", {f"e{i}": {"epochs": 1} for i in range(6)})
    args = ["--grid", grid, "--timeout", "0.001", *BASE_ARGS]
    workers = [start_worker("together", storage, *args, cwd=tmp_path, uri=tracking_uri) for _ in range(3)]
    for code, _, err in (finish(w, timeout=300) for w in workers):
        assert code == 0, err[-3000:]
    queued = trials("together", storage)
    assert sorted(t.user_attrs[GRID_ENTRY_ATTR] for t in queued) == [f"e{i}" for i in range(6)]
    assert all(t.state == TrialState.WAITING for t in queued)
    parent, children = study_runs("together")
    assert parent is not None and not children
    assert parent.data.tags[tracking.TAG_STUDY_STATE] == "stopped with 6 trials queued"


def test_a_study_of_another_objective_is_refused(
    tracking_uri: str, storage: str, tmp_path: Path, capsys: Capture
) -> None:
    grid = write_grid(tmp_path / "g.yaml", {"a": {"epochs": 1}})
    created = optimize_here(
        capsys, tmp_path, "by-loss", storage, "--grid", grid, "--timeout", "0.001", *BASE_ARGS
    )
    assert created.returncode == 0, created.stderr
    refused = run_main(capsys, *optimize_args("by-loss", storage, "--objective", "sdr"))
    assert_one_line_error(refused, "study 'by-loss' optimizes valid_loss, not sdr")
    zero = run_main(capsys, *optimize_args("by-loss", storage, "--n-trials", "0"))
    assert_one_line_error(zero, "'--n-trials': 0 is not in the range x>=1")
    assert [t.state for t in trials("by-loss", storage)] == [TrialState.WAITING]


def test_an_absent_server_is_a_clear_error_within_30_s(
    storage: str, monkeypatch: pytest.MonkeyPatch, capsys: Capture
) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    started = time.monotonic()
    done = run_main(capsys, "optimize", "--grid", "seed", "--storage", storage)
    assert time.monotonic() - started < 30
    assert_one_line_error(done, f"MLflow tracking server {uri} does not answer")
