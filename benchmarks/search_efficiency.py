"""Search efficiency (TPE with median or Hyperband pruning against random search); storage overhead per trial.

Part 1, efficiency (training only, in this process and a pool of single-threaded processes). The
three methods a user picks from (`umx-tune optimize --sampler tpe --pruner median`, `--sampler tpe
--pruner hyperband`, `--sampler random --pruner none`) search the same space (umx-tune's own space
code: lr on a log scale, hidden size, batch size, samples per track; 8 epochs each, so that pruning
has epochs to act on) at CPU scale, with the same budget and several sampler seeds each. The target
is hard to hit: the best validation loss of 40 unpruned random trials (their own fixed seeds, run
once per benchmark, apart from the compared searches). Each search runs trials until a complete
trial reaches the target or the budget (1.5 x the target trials' compute) is spent; a seed that
misses counts as the budget and is flagged. Compute = training epochs x training samples (pruned
trials count the epochs they ran), and training wall time. Per method: the compute to the target,
median and worst over seeds, and the best loss at equal compute (each search's best complete trial
within the cheapest method's median compute; searches that reached the target sooner are run again
until they have spent it). Trials are turned into configs by umx-tune's space code and trained by
its Trainer with the per-epoch report and pruning of `umx-tune optimize` (a diverged trial fails,
as there); evaluation and MLflow are left out because they do not change the validation loss
(part 2 measures them). torch uses one thread per process (`--jobs` processes, default 2), so the
wall times are of one core each; the compute figures do not depend on the machine's load.

Part 2, storage overhead. Real `umx-tune optimize` workers (1, then 3 processes sharing one grid
study of three tiny trials) against a real `mlflow server` on 127.0.0.1 and a sqlite Optuna storage.
Each worker times every Optuna storage call and every MLflow tracking/artifact call it makes
(outermost calls of Optuna's RDBStorage and MLflow's RestStore / HttpArtifactRepository), and
counts the HTTP requests those send (per group and endpoint).

    .venv/bin/python benchmarks/search_efficiency.py --out benchmarks/search_efficiency.json
    .venv/bin/python benchmarks/search_efficiency.py --quick     # 2 seeds, 10 target trials
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState
from servers import start_server

from umx_tune.config import TrainConfig
from umx_tune.data.dataset import open_dataset
from umx_tune.search import choices, plans
from umx_tune.training.trainer import EpochResult, Trainer, TrainingDiverged

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent

# CPU scale: 8 training tracks of 4 s (2 validation tracks), 1 s chunks, a small STFT, 8 epochs
SCALE = {
    "synth_tracks": 8,
    "synth_duration": 4.0,
    "seq_dur": 1.0,
    "nfft": 512,
    "nhop": 256,
    "epochs": 8,
    "nb_workers": 0,
    "device": "cpu",
}
SPACE = """\
description: search_efficiency.py part 1, at CPU scale
params:
  lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}
  hidden_size: {type: int, low: 8, high: 64, step: 8}
  batch_size: {type: categorical, choices: [1, 2, 4, 8]}
  samples_per_track: {type: int, low: 1, high: 4}
"""
# method -> (sampler, pruner), by the names `umx-tune optimize --sampler/--pruner` take
METHODS = {
    "tpe+median": ("tpe", "median"),
    "tpe+hyperband": ("tpe", "hyperband"),
    "random": ("random", "none"),
}
BASELINE = "random"
PRUNER_STARTUP_TRIALS = 3  # `umx-tune optimize --pruner-startup-trials` default
TARGET_SEED = 1000  # the target trials' sampler seeds are TARGET_SEED, TARGET_SEED + 1, ... (one per job)
GOAL = 1 / 3  # TPE with pruning reaches the target with at most this share of random search's compute


def train(config: TrainConfig, on_epoch: Callable[[EpochResult], None] | None = None) -> dict[str, Any]:
    """Train one config as an `optimize` trial does; compute counts the epochs that ran (also
    when on_epoch prunes it, or it diverges: the epoch that diverged ran too)."""
    data = open_dataset(config, progress=False)
    losses: list[float] = []

    def record(result: EpochResult) -> None:
        losses.append(result.valid_loss)
        if on_epoch is not None:
            on_epoch(result)

    state, epochs = TrialState.COMPLETE, None
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            Trainer(config, data, torch.device("cpu"), Path(tmp), progress=False).fit(record)
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except TrainingDiverged:  # `optimize` fails the trial and the study goes on
            state, epochs = TrialState.FAIL, len(losses) + 1
    epochs = len(losses) if epochs is None else epochs
    return {
        "state": state.name,
        "best_loss": min(losses, default=math.inf),
        "epochs": epochs,
        "samples": epochs * config.samples_per_track * len(data.train),
        "seconds": time.perf_counter() - started,
    }


def new_study(method: str, seed: int, max_epochs: int) -> optuna.Study:
    sampler, pruner = METHODS[method]
    settings = choices.PrunerSettings(startup_trials=PRUNER_STARTUP_TRIALS, max_epochs=max_epochs)
    return optuna.create_study(
        study_name=f"{method}-{seed}",  # Hyperband assigns trials to brackets by a hash of this name
        sampler=choices.make_sampler(sampler, seed),
        pruner=choices.make_pruner(pruner, settings),
    )


def run_trial(study: optuna.Study, space: plans.Space, base: TrainConfig) -> dict[str, Any]:
    """Ask, train with the per-epoch report and pruning of `umx-tune optimize`, tell."""
    trial = study.ask()

    def report(result: EpochResult) -> None:
        trial.report(result.valid_loss, result.epoch)  # as the valid_loss objective's intermediate
        if trial.should_prune():
            raise optuna.TrialPruned()

    row = train(space.config_for(trial, base), report)
    if row["state"] == TrialState.COMPLETE.name:
        study.tell(trial, row["best_loss"])
    else:
        study.tell(trial, state=TrialState[row["state"]])
    return {**row, "params": trial.params}


def search(job: dict[str, Any]) -> dict[str, Any]:
    """One method with one seed: trials until a complete one reaches job["target"] (once at least
    job["at_least"] samples are spent) or job["budget"] samples are, or job["trials"] have run."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    base, space, target = job["base"], job["space"], job["target"]
    study = new_study(job["method"], job["seed"], base.epochs)
    history: list[dict[str, Any]] = []
    samples, seconds, reached = 0, 0.0, None
    while samples < job["budget"] and len(history) < job["trials"]:
        if reached is not None and samples >= job["at_least"]:
            break
        row = run_trial(study, space, base)
        samples, seconds = samples + row["samples"], seconds + row["seconds"]
        history.append({**row, "samples_total": samples, "seconds_total": seconds})
        hit = row["state"] == TrialState.COMPLETE.name and row["best_loss"] <= target
        if reached is None and hit and samples <= job["budget"]:
            reached = len(history)
    end = history[-1] if reached is None else history[reached - 1]
    print(
        f"  {job['method']} seed {job['seed']}: {len(history)} trials, reached at {reached}", file=sys.stderr
    )
    return {
        "method": job["method"],
        "seed": job["seed"],
        "reached": reached is not None,
        "trials_to_target": len(history) if reached is None else reached,
        "samples_to_target": job["budget"] if reached is None else end["samples_total"],
        "seconds_to_target": end["seconds_total"],
        "history": history,
    }


def best_within(run: dict[str, Any], samples: float) -> float:
    """The best loss of a search's complete trials that ended within `samples` of compute."""
    done = [
        t for t in run["history"] if t["state"] == TrialState.COMPLETE.name and t["samples_total"] <= samples
    ]
    return min((t["best_loss"] for t in done), default=math.inf)


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "worst": max(values)}


def summarize(runs: list[dict[str, Any]], equal: float) -> dict[str, Any]:
    """One method's figures over its seeds."""
    trials = [t for r in runs for t in r["history"]]
    return {
        "samples_to_target": spread([r["samples_to_target"] for r in runs]),
        "seconds_to_target": spread([r["seconds_to_target"] for r in runs]),
        "trials_to_target": spread([r["trials_to_target"] for r in runs]),
        "missed_seeds": [r["seed"] for r in runs if not r["reached"]],  # counted as the budget
        "best_loss_at_equal_compute": spread([best_within(r, equal) for r in runs]),
        "pruned_share": sum(t["state"] == TrialState.PRUNED.name for t in trials) / len(trials),
        "failed_trials": sum(t["state"] == TrialState.FAIL.name for t in trials),
    }


def find_target(pool: Any, job: dict[str, Any], trials: int, jobs: int) -> dict[str, Any]:
    """The best loss of `trials` unpruned random trials (split over the pool, one seed each)."""
    split = [trials // jobs + (i < trials % jobs) for i in range(jobs)]
    parts = [{**job, "seed": TARGET_SEED + i, "trials": n} for i, n in enumerate(split) if n]
    history = [t for run in pool.map(search, parts) for t in run["history"]]
    best = min(history, key=lambda t: t["best_loss"])
    return {
        "loss": best["best_loss"],
        "params": best["params"],
        "trials": len(history),
        "samples": sum(t["samples"] for t in history),
        "seconds": sum(t["seconds"] for t in history),
        "history": [{k: v for k, v in t.items() if not k.endswith("_total")} for t in history],
    }


def one_thread() -> None:
    torch.set_num_threads(1)  # one process per core: threads would only fight over the cores


def bench_space(base: TrainConfig) -> plans.Space:
    """SPACE through umx-tune's own space loading (checked against TrainConfig as --search is)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "space.yaml"
        path.write_text(SPACE)
        return plans.load_space(str(path), base)


def compare(pool: Any, job: dict[str, Any], seeds: list[int]) -> tuple[list[dict[str, Any]], float]:
    """Every method with every seed; (the searches, the equal-compute point in samples).

    The equal-compute point is the cheapest method's median compute to the target. Searches that
    stopped at the target before spending it run again (same seed, so the same trials: training is
    seeded and single-threaded) until they have; rerun_agrees checks that the trials were the same.
    """
    longest_first = sorted(METHODS, key=lambda m: m != BASELINE)  # random search prunes nothing
    todo = [{**job, "method": m, "seed": s} for m in longest_first for s in seeds]
    runs = pool.map(search, todo, chunksize=1)
    equal = min(statistics.median(r["samples_to_target"] for r in runs if r["method"] == m) for m in METHODS)
    short = [i for i, r in enumerate(runs) if r["history"][-1]["samples_total"] < equal]
    reruns = pool.map(search, [{**todo[i], "at_least": equal} for i in short], chunksize=1)
    for i, rerun in zip(short, reruns, strict=True):
        first = [t["best_loss"] for t in runs[i]["history"]]
        agrees = [t["best_loss"] for t in rerun["history"][: len(first)]] == first
        runs[i] = {**rerun, "rerun_to_equal_compute": True, "rerun_agrees": agrees}
    return runs, equal


def efficiency(seeds: list[int], target_trials: int, budget_factor: float, jobs: int) -> dict[str, Any]:
    load_before, started = os.getloadavg(), time.perf_counter()
    base = TrainConfig.from_dict(SCALE)
    open_dataset(base, progress=False)  # build the synthetic dataset before anything is timed
    job = {"base": base, "space": bench_space(base), "method": "random", "target": -math.inf}
    job.update(budget=math.inf, trials=sys.maxsize, at_least=0)
    with multiprocessing.get_context("spawn").Pool(jobs, initializer=one_thread) as pool:
        target = find_target(pool, job, target_trials, jobs)
        job.update(target=target["loss"], budget=budget_factor * target["samples"])
        runs, equal = compare(pool, job, seeds)
        pool.close()  # and wait: leaving the block would terminate the workers mid-cleanup
        pool.join()
    results = {m: summarize([r for r in runs if r["method"] == m], equal) for m in METHODS}
    baseline = results[BASELINE]["samples_to_target"]["median"]
    baseline_seconds = results[BASELINE]["seconds_to_target"]["median"]
    for figures in results.values():
        figures["median_samples_vs_random"] = figures["samples_to_target"]["median"] / baseline
        figures["median_seconds_vs_random"] = figures["seconds_to_target"]["median"] / baseline_seconds
    return {
        "scale": SCALE,
        "space": SPACE,
        "methods": {m: {"sampler": s, "pruner": p} for m, (s, p) in METHODS.items()},
        "seeds": seeds,
        "pruner_startup_trials": PRUNER_STARTUP_TRIALS,
        "torch_threads_per_process": 1,
        "processes": jobs,
        "target": target,
        "budget_samples": job["budget"],
        "equal_compute_samples": equal,
        "results": results,
        "goal": f"TPE with pruning: median samples to target <= {GOAL:.3g} x random search's",
        "goal_met": {m: results[m]["median_samples_vs_random"] <= GOAL for m in METHODS if m != BASELINE},
        "runs": runs,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "seconds": time.perf_counter() - started,
    }


# ------------------------------------------------------------------------------------------------
# part 2: storage overhead of real workers


class CallTimer:
    """Wraps the public methods of classes and adds up the seconds spent in them (outermost calls
    only, so that a method calling another is counted once), per group."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.methods: dict[str, int] = defaultdict(int)  # 'group.method' -> outermost calls
        self.method_seconds: dict[str, float] = defaultdict(float)
        self._depth = threading.local()

    def wrap(self, cls: type, group: str, extra: tuple[str, ...] = ()) -> None:
        for name in [n for n in dir(cls) if not n.startswith("_")] + list(extra):
            raw = inspect.getattr_static(cls, name, None)
            if inspect.isfunction(raw):  # plain methods only (static/class methods and properties stay)
                setattr(cls, name, self._timed(raw, group))

    def _timed(self, method: Callable[..., Any], group: str) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            depth = getattr(self._depth, group, 0)
            setattr(self._depth, group, depth + 1)
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                setattr(self._depth, group, depth)
                if depth == 0:
                    self.seconds[group] += time.perf_counter() - started
                    self.calls[group] += 1
                    self.methods[f"{group}.{method.__name__}"] += 1
                    self.method_seconds[f"{group}.{method.__name__}"] += time.perf_counter() - started

        return timed


class RequestCounter:
    """Counts and times every HTTP request the process sends (MLflow's tracking and artifact
    requests: the only HTTP it makes here), by group and by endpoint."""

    def __init__(self) -> None:
        self.requests: dict[str, int] = defaultdict(int)
        self.seconds: dict[str, float] = defaultdict(float)
        self.endpoints: dict[str, int] = defaultdict(int)

    def install(self) -> None:
        import requests

        send = requests.Session.request

        def counted(session: Any, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            path = url.split("://", 1)[-1].split("/", 1)[-1].split("?", 1)[0]
            group = "mlflow_artifacts" if "mlflow-artifacts/" in path else "mlflow_tracking"
            endpoint = path if group == "mlflow_tracking" else "mlflow-artifacts (file)"
            started = time.perf_counter()
            try:
                return send(session, method, url, *args, **kwargs)
            finally:
                self.seconds[group] += time.perf_counter() - started
                self.requests[group] += 1
                self.endpoints[f"{method} {endpoint}"] += 1

        requests.Session.request = counted  # type: ignore[method-assign]


def profiled_worker(out: Path, argv: list[str]) -> None:
    """Run `umx-tune optimize` in this process with Optuna and MLflow calls timed; write totals."""
    from mlflow.store.artifact.http_artifact_repo import HttpArtifactRepository
    from mlflow.store.tracking.rest_store import RestStore
    from optuna.storages import RDBStorage

    from umx_tune.cli import main

    timer = CallTimer()
    timer.wrap(RDBStorage, "optuna", extra=("_get_trials",))
    timer.wrap(RestStore, "mlflow_tracking")
    timer.wrap(HttpArtifactRepository, "mlflow_artifacts")
    counter = RequestCounter()
    counter.install()
    started = time.perf_counter()
    code = 0
    try:
        main(argv)
    except SystemExit as stop:
        code = int(stop.code or 0)
    result = {
        "exit": code,
        "wall": time.perf_counter() - started,
        "seconds": timer.seconds,
        "calls": timer.calls,
        "methods": timer.methods,
        "method_seconds": timer.method_seconds,
        "requests": counter.requests,
        "request_seconds": counter.seconds,
        "endpoints": counter.endpoints,
    }
    out.write_text(json.dumps(result))


def storage_overhead(workers: int, root: Path, trials: int = 3) -> dict[str, Any]:
    """Tiny grid trials shared by `workers` worker processes; seconds in storage calls per trial."""
    grid = root / "grid.yaml"
    grid.write_text("entries:\n" + "".join(f"  t{i}: {{hidden_size: {8 + 4 * i}}}\n" for i in range(trials)))
    process, uri = start_server(root)
    tiny = ["--epochs", "1", "--samples-per-track", "2", "--batch-size", "4", "--synth-tracks", "2"]
    tiny += ["--synth-duration", "2", "--seq-dur", "1", "--nfft", "1024", "--nhop", "256", "--device", "cpu"]
    argv = ["optimize", "--grid", str(grid), "--study-name", f"overhead-{workers}", "--quiet"]
    argv += ["--storage", f"sqlite:///{root / 'optuna.db'}", "--heartbeat-interval", "5", *tiny]
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    try:
        procs = [
            subprocess.Popen(
                [sys.executable, __file__, "--profiled-worker", str(root / f"w{i}.json"), "--", *argv],
                env=env,
                cwd=root,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            for i in range(workers)
        ]
        for p in procs:
            _, err = p.communicate(timeout=3600)
            if p.returncode:
                raise RuntimeError(f"worker failed: {err[-2000:]}")
    finally:
        process.terminate()
        process.wait(timeout=30)
    reports = [json.loads((root / f"w{i}.json").read_text()) for i in range(workers)]
    groups = ("optuna", "mlflow_tracking", "mlflow_artifacts")
    per_trial = {g: sum(r["seconds"].get(g, 0.0) for r in reports) / trials for g in groups}
    calls = {g: sum(r["calls"].get(g, 0) for r in reports) / trials for g in groups}
    methods = sorted({m for r in reports for m in r["methods"]})
    by_method = {m: sum(r["methods"].get(m, 0) for r in reports) / trials for m in methods}
    seconds_by_method = {m: sum(r["method_seconds"].get(m, 0.0) for r in reports) / trials for m in methods}
    http = ("mlflow_tracking", "mlflow_artifacts")
    requests = {g: sum(r["requests"].get(g, 0) for r in reports) / trials for g in http}
    request_seconds = {g: sum(r["request_seconds"].get(g, 0.0) for r in reports) / trials for g in http}
    endpoints = sorted({e for r in reports for e in r["endpoints"]})
    by_endpoint = {e: sum(r["endpoints"].get(e, 0) for r in reports) / trials for e in endpoints}
    return {
        "workers": workers,
        "trials": trials,
        "wall_seconds": max(r["wall"] for r in reports),
        "seconds_per_trial": per_trial,
        "calls_per_trial": calls,
        "calls_per_trial_by_method": by_method,
        "seconds_per_trial_by_method": seconds_by_method,
        "storage_seconds_per_trial": per_trial["optuna"] + per_trial["mlflow_tracking"],
        # what went over the wire: HTTP requests and their seconds (an upload of a folder is a
        # request per file; a call such as shut_down_async_logging is none)
        "http_requests_per_trial": requests,
        "http_seconds_per_trial": request_seconds,
        "http_requests_per_trial_by_endpoint": by_endpoint,
    }


def finite(value: Any) -> Any:
    """value with every infinite or NaN float (no complete trial, a diverged one) as None: JSON has none."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="sampler seeds")
    parser.add_argument(
        "--target-trials", type=int, default=40, help="random trials the target is the best of"
    )
    parser.add_argument(
        "--budget-factor", type=float, default=1.5, help="budget / the target trials' compute"
    )
    parser.add_argument("--jobs", type=int, default=2, help="single-threaded training processes")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 seeds, 10 target trials")
    parser.add_argument("--skip-efficiency", action="store_true")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--profiled-worker", type=Path, default=None, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.profiled_worker is not None:
        profiled_worker(args.profiled_worker, [a for a in rest if a != "--"])
        return
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    torch.set_num_threads(1)
    started, load = time.perf_counter(), os.getloadavg()
    result: dict[str, Any] = {}
    if not args.skip_efficiency:
        seeds, trials = (args.seeds[:2], 10) if args.quick else (args.seeds, args.target_trials)
        result["efficiency"] = efficiency(seeds, trials, args.budget_factor, args.jobs)
    if not args.skip_overhead:
        with tempfile.TemporaryDirectory() as one, tempfile.TemporaryDirectory() as three:
            result["storage_overhead"] = [storage_overhead(1, Path(one)), storage_overhead(3, Path(three))]
    result["machine"] = {
        "cpus": os.cpu_count(),
        "load_average_before": load,
        "load_average_after": os.getloadavg(),
    }
    result["benchmark_seconds"] = time.perf_counter() - started
    text = json.dumps(finite(result), indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
