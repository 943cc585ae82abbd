"""A chaos run on the real pieces: does a study lose, double or strand anything under faults?

PostgreSQL (the deployment test's cluster, tests/deployment.py) holds the Optuna storage and the
MLflow backend store; a real `mlflow server` serves it behind an HTTP proxy that can cut answers
midway (tests/cutting_proxy.py). Three `umx-tune optimize` workers run a TINY grid (24 entries),
then separately a pruned search (24 trials), while a seeded schedule injects faults: SIGKILL a
random worker every 20-40 s (a new one starts at once), SIGTERM one, restart the MLflow server twice
(the first time just after a trial ends), terminate the workers' PostgreSQL connections once
(pg_terminate_backend), and cut every HTTP answer for a few seconds. When the workers are done,
`umx-tune optimize --check` audits each study. The same studies without faults give the baseline.

Prints JSON: per study, trials lost / duplicated / left RUNNING and the audit's disagreements (all
must be 0), the faults injected by kind, and the wall time against the baseline's.

    .venv/bin/python benchmarks/chaos.py [--seed 0] [--out chaos.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import optuna  # noqa: E402
import sqlalchemy  # noqa: E402
from conftest import (  # noqa: E402
    TINY,
    VENV_BIN,
    MlflowServer,
    cli_env,
    free_port,
    start_mlflow_server,
    stop_mlflow_server,
)
from cutting_proxy import CuttingProxy  # noqa: E402
from deployment import (  # noqa: E402
    MLFLOW_DB_PASSWORD,
    OPTUNA_DB_PASSWORD,
    SUPERUSER_PASSWORD,
    Postgres,
    running_postgres,
)
from mlflow.tracking import MlflowClient  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from umx_tune import tracking  # noqa: E402
from umx_tune.cli.options import option_name  # noqa: E402
from umx_tune.search.audit import trial_key  # noqa: E402

HEARTBEAT = 2  # seconds; a killed worker's trial is failed and queued again 7 s after its last beat
WORKER_ARGS = [
    *(a for n, v in {**TINY, "device": "cpu", "nb_workers": 0}.items() for a in (option_name(n), str(v))),
    *("--no-audio", "--no-system-metrics", "--quiet", "--heartbeat-interval", str(HEARTBEAT)),
]
# one training thread per worker: three workers share the machine's cores
WORKER_ENV = {"OMP_NUM_THREADS": "1"}


@dataclass(frozen=True)
class Schedule:
    """When faults strike, in seconds from the start, drawn from a seed (kills: every 20-40 s)."""

    seed: int
    kill_every: tuple[float, float] = (20.0, 40.0)
    # the one-off faults apart from each other, all within the first 100 s (the faultless study of
    # 24 TINY trials takes about 70 s on 2 cores)
    boundary_restart_after: tuple[float, float] = (5.0, 15.0)  # then restart when a trial ends
    sigterm: tuple[float, float] = (25.0, 45.0)
    cut: tuple[float, float] = (35.0, 50.0)
    pg_terminate: tuple[float, float] = (55.0, 70.0)
    restart: tuple[float, float] = (75.0, 95.0)
    cut_seconds: float = 4.0
    downtime: tuple[float, float] = (10.0, 5.0)  # the boundary restart's, the other's

    def times(self, rng: random.Random) -> dict[str, float]:
        ranges = {
            "sigterm": self.sigterm,
            "boundary_restart": self.boundary_restart_after,
            "restart": self.restart,
            "pg_terminate": self.pg_terminate,
            "cut": self.cut,
        }
        return {kind: rng.uniform(*span) for kind, span in ranges.items()}


@dataclass
class Stack:
    """PostgreSQL, the MLflow server on it (restartable on its port) and the cutting proxy."""

    postgres: Postgres
    root: Path
    backend: str
    port: int
    server: MlflowServer
    proxy: CuttingProxy

    @property
    def storage(self) -> str:
        return self.postgres.url("optuna", OPTUNA_DB_PASSWORD, "optuna")

    def restart_mlflow(self, downtime: float) -> None:
        stop_mlflow_server(self.server)
        time.sleep(downtime)
        self.server = start_mlflow_server(self.root, self.backend, self.port)

    def terminate_workers_connections(self) -> int:
        """pg_terminate_backend on every connection of the workers' role; returns how many."""
        engine = sqlalchemy.create_engine(self.postgres.url("postgres", SUPERUSER_PASSWORD, "postgres"))
        query = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = 'optuna'"
        try:
            with engine.connect() as connection:
                return int(connection.execute(sqlalchemy.text(query)).scalar() or 0)
        finally:
            engine.dispose()


@contextmanager
def stack(folder: Path, pg: Postgres) -> Iterator[Stack]:
    """An MLflow server on a new database of the cluster (pg), behind the cutting proxy."""
    database = f"chaos_mlflow_{free_port()}"  # a fresh one: nothing of other runs or tests in it
    admin = sqlalchemy.create_engine(pg.url("postgres", SUPERUSER_PASSWORD, "postgres"))
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(sqlalchemy.text(f"CREATE DATABASE {database} OWNER mlflow"))
    admin.dispose()
    backend = pg.url("mlflow", MLFLOW_DB_PASSWORD, database)
    # the empty database's migrations first: they take longer than a server start may wait
    subprocess.run([str(VENV_BIN / "mlflow"), "db", "upgrade", backend], check=True, capture_output=True)
    port = free_port()
    server = start_mlflow_server(folder / "mlflow", backend, port)
    proxy = CuttingProxy(server.uri)
    built = Stack(pg, folder / "mlflow", backend, port, server, proxy)
    try:
        yield built
    finally:
        proxy.close()
        stop_mlflow_server(built.server)


@dataclass
class Workers:
    """The study's worker processes, each in its own process group (a kill takes its children)."""

    stack: Stack
    argv: list[str]
    folder: Path
    processes: list[subprocess.Popen] = field(default_factory=list)
    exits: Counter[int] = field(default_factory=Counter)  # exit statuses of workers that ended themselves
    started: int = 0

    def start(self) -> None:
        self.started += 1
        log = open(self.folder / f"worker-{self.started}.log", "w")  # noqa: SIM115  (the child's)
        env = cli_env(MLFLOW_TRACKING_URI=self.stack.proxy.url, **WORKER_ENV)
        command = [str(VENV_BIN / "umx-tune"), *self.argv]
        self.processes.append(
            subprocess.Popen(
                command,
                cwd=self.folder,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )

    def live(self) -> list[subprocess.Popen]:
        return [p for p in self.processes if p.poll() is None]

    def kill(self, process: subprocess.Popen, how: signal.Signals) -> None:
        if how == signal.SIGKILL:
            os.killpg(process.pid, signal.SIGKILL)
        else:  # as `docker stop` does: the main process only; SIGKILL after 30 s
            process.send_signal(how)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        self.processes.remove(process)
        self.start()


def run_study(
    stack: Stack, name: str, plan: list[str], folder: Path, schedule: Schedule | None, deadline: float
) -> dict[str, Any]:
    """Three workers on one study until they are done (or the deadline), faults from schedule."""
    folder.mkdir(parents=True)
    argv = ["optimize", "--study-name", name, "--storage", stack.storage, *WORKER_ARGS, *plan]
    argv += ["--checkpoint-dir", str(folder / "checkpoints")]
    workers = Workers(stack, argv, folder)
    faults: Counter[str] = Counter()
    rng = random.Random(schedule.seed) if schedule else None
    due = schedule.times(rng) if schedule and rng else {}
    start = time.monotonic()
    next_kill = start + (rng.uniform(*schedule.kill_every) if schedule and rng else float("inf"))
    ended = 0
    for _ in range(3):
        workers.start()
    while workers.live():
        now = time.monotonic()
        if now - start > deadline:
            faults["deadline_hit"] += 1
            for process in workers.live():
                os.killpg(process.pid, signal.SIGKILL)
            break
        for process in [p for p in workers.processes if p.poll() is not None]:
            workers.exits[process.returncode] += 1
            workers.processes.remove(process)
            if process.returncode != 0 and _open_trials(stack, name):
                workers.start()  # it failed (e.g. it started while the server was down): another one
        if schedule and rng and workers.live():
            _inject(stack, workers, schedule, rng, due, now - start, faults)
            if now >= next_kill and workers.live():
                workers.kill(rng.choice(workers.live()), signal.SIGKILL)
                faults["sigkill"] += 1
                next_kill = time.monotonic() + rng.uniform(*schedule.kill_every)
            finished = _finished(stack, name)
            armed = "boundary_restart" not in due and not faults["mlflow_restart_at_trial_end"]
            if armed and finished > ended:  # a trial has just ended: its worker starts the next one now
                stack.restart_mlflow(schedule.downtime[0])
                faults["mlflow_restart_at_trial_end"] += 1
            ended = finished
        time.sleep(0.5)
    wall = time.monotonic() - start
    faults["http_answers_cut"] = len(stack.proxy.cut_paths)
    stack.proxy.cut_paths.clear()
    outcome = _outcome(stack, name)
    if any(outcome[k] for k in ("lost", "duplicated", "left_running", "disagreements")):
        # the workers' and the server's logs, kept where the run's temporary folder is not removed
        kept = Path(tempfile.gettempdir()) / f"umx-tune-chaos-kept-{name}"
        shutil.copytree(folder, kept, dirs_exist_ok=True, ignore=shutil.ignore_patterns("checkpoints"))
        shutil.copy(stack.root / "server.log", kept / "mlflow-server.log")
        outcome["kept_logs"] = str(kept)
    return {"wall_s": round(wall, 1), "worker_exits": dict(workers.exits), **outcome, "faults": faults}


def _inject(
    stack: Stack,
    workers: Workers,
    schedule: Schedule,
    rng: random.Random,
    due: dict[str, float],
    elapsed: float,
    faults: Counter[str],
) -> None:
    """The one-off faults whose time has come (each is removed from due when it strikes)."""
    for kind, at in sorted(due.items(), key=lambda item: item[1]):
        if elapsed < at:
            continue
        del due[kind]
        if kind == "sigterm":
            workers.kill(rng.choice(workers.live()), signal.SIGTERM)
            faults["sigterm"] += 1
        elif kind == "restart":
            stack.restart_mlflow(schedule.downtime[1])
            faults["mlflow_restart"] += 1
        elif kind == "pg_terminate":
            faults["pg_connections_terminated"] += stack.terminate_workers_connections()
            faults["pg_terminate"] += 1
        elif kind == "cut":
            stack.proxy.cut_for(schedule.cut_seconds)
            faults["http_cut_windows"] += 1
        # "boundary_restart": from now on, the next trial to end restarts the server (run_study)


def _trials(stack: Stack, name: str) -> list[optuna.trial.FrozenTrial]:
    """The study's trials ([] before a worker has made it). One connection per reading (closed
    after it), and no table creation: the workers create Optuna's tables, as their role."""
    try:
        storage = optuna.storages.RDBStorage(
            stack.storage,
            engine_kwargs={"poolclass": sqlalchemy.pool.NullPool},
            skip_table_creation=True,
            skip_compatibility_check=True,
        )
        return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    except (KeyError, optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError):
        return []  # no study, or no tables yet


def _finished(stack: Stack, name: str) -> int:
    return sum(t.state.is_finished() for t in _trials(stack, name))


def _open_trials(stack: Stack, name: str) -> bool:
    """Whether the study has trials still to run (or does not exist yet)."""
    trials = _trials(stack, name)
    return not trials or any(not t.state.is_finished() for t in trials)


def _outcome(stack: Stack, name: str) -> dict[str, Any]:
    """What the study holds once its workers are done, and what the audit says of it (after the
    heartbeat grace period: a run whose worker was just killed still looks alive until then)."""
    time.sleep(3 * HEARTBEAT + 5)
    trials = _trials(stack, name)
    groups: dict[tuple[str, int], list[optuna.trial.FrozenTrial]] = {}
    for trial in trials:
        groups.setdefault(trial_key(trial), []).append(trial)
    done = {
        key: [t for t in group if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        for key, group in groups.items()
    }
    client = MlflowClient(stack.server.uri)
    experiment = client.get_experiment_by_name(tracking.DEFAULT_EXPERIMENT)
    study_runs = tracking.tag_equals(tracking.TAG_STUDY, name)
    runs = client.search_runs([experiment.experiment_id], study_runs) if experiment else []
    check = subprocess.run(
        [str(VENV_BIN / "umx-tune"), "optimize", "--check", "--study-name", name, "--storage", stack.storage],
        capture_output=True,
        text=True,
        env=cli_env(MLFLOW_TRACKING_URI=stack.server.uri),
        timeout=600,
    )
    lines = check.stdout.strip().splitlines()[:-1]
    return {
        "trials": dict(Counter(t.state.name for t in trials)),
        "configs": len(groups),
        "lost": sum(not d for d in done.values()),
        "duplicated": sum(len(d) > 1 for d in done.values()),
        "left_running": sum(t.state == TrialState.RUNNING for t in trials)
        + sum(r.info.status == tracking.STATUS_RUNNING for r in runs),
        "disagreements": len(lines),
        "disagreements_by_kind": dict(Counter(line.split(":")[0] for line in lines)),
        "check_exit": check.returncode,
        "check_output": lines[:20] or check.stderr.strip().splitlines()[-3:],
    }


def grid_plan(folder: Path, entries: int) -> list[str]:
    """A grid of distinct TINY configs (hidden size and seed vary), one epoch each."""
    lines = [f"  e{i:02d}: {{hidden_size: {8 + 4 * (i % 3)}, seed: {i}}}" for i in range(entries)]
    path = folder / "grid.yaml"
    path.write_text("entries:\n" + "\n".join(lines) + "\n")
    return ["--grid", str(path), "--epochs", "1"]


def search_plan(folder: Path, trials: int) -> list[str]:
    """A pruned search: median pruning on the per-epoch validation loss, two epochs per trial."""
    path = folder / "space.yaml"
    path.write_text(
        "params:\n  hidden_size: {type: int, low: 8, high: 24, step: 4}\n"
        "  lr: {type: float, low: 0.0001, high: 0.01, log: true}\n"
    )
    return ["--search", str(path), "--n-trials", str(trials), "--pruner", "median"] + [
        "--pruner-startup-trials",
        "2",
        "--epochs",
        "2",
        "--sampler-seed",
        "0",
    ]


def chaos(
    folder: Path, seed: int, trials: int, schedule: Schedule, deadline: float, out: Path | None
) -> dict[str, Any]:
    """Grid and search, each without faults (the baseline) and under the schedule; with out, the
    results so far are written there after each study (a long run that is stopped keeps them)."""
    results: dict[str, Any] = {}
    with running_postgres() as pg, stack(folder, pg) as built:
        for kind, plan in (("grid", grid_plan(folder, trials)), ("search", search_plan(folder, trials))):
            base = run_study(built, f"base-{kind}-{seed}", plan, folder / f"base-{kind}", None, deadline)
            hit = run_study(built, f"chaos-{kind}-{seed}", plan, folder / f"chaos-{kind}", schedule, deadline)
            hit["baseline_wall_s"] = base["wall_s"]
            hit["overhead"] = round(hit["wall_s"] / base["wall_s"] - 1, 2)
            hit["baseline"] = {k: base[k] for k in ("lost", "duplicated", "left_running", "disagreements")}
            results[kind] = hit
            if out:
                out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trials", type=int, default=24, help="grid entries, and search trials")
    parser.add_argument("--deadline", type=float, default=1500.0, help="seconds per study at most")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="umx-tune-chaos-") as tmp:
        results = chaos(Path(tmp), args.seed, args.trials, Schedule(args.seed), args.deadline, args.out)
    results["load_start"], results["load_end"] = load_start, os.getloadavg()
    results["cpus"] = os.cpu_count()
    text = json.dumps(results, indent=2, default=str)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
