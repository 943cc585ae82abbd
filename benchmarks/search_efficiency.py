"""Search efficiency of TPE + median pruning against the study grid, and storage overhead per trial.

Part 1, efficiency (training only, in this process). The six configs of the seed grid, scaled down
to CPU size (hidden size / 16, samples per track / 4, batch size / 4; epochs as in the study), are
trained on the synthetic dataset; their best validation loss is the target. Then, for each seed,
TPE with median pruning searches a space over the same axes (plus lr) until one trial reaches the
target. Compute = training epochs x training samples (pruned trials count the epochs they ran),
and training wall time. Trials are turned into configs by umx-tune's own space code and trained by
its own Trainer with the per-epoch report and pruning of `umx-tune optimize`; evaluation and MLflow
logging are left out here because they do not change the validation loss (part 2 measures them).

Part 2, storage overhead. Real `umx-tune optimize` workers (1, then 3 processes sharing one grid
study of three tiny trials) against a real `mlflow server` on 127.0.0.1 and a sqlite Optuna storage.
Each worker times every Optuna storage call and every MLflow tracking/artifact call it makes.

    .venv/bin/python benchmarks/search_efficiency.py --out benchmarks/search_efficiency.json
    .venv/bin/python benchmarks/search_efficiency.py --quick     # 3 seeds, fewer search trials
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
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
from servers import start_server

from umx_tune.config import TrainConfig
from umx_tune.data.dataset import open_dataset
from umx_tune.search import choices, plans
from umx_tune.training.trainer import EpochResult, Trainer

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent

# CPU scale: 4 training tracks of 4 s, 1 s chunks, a small STFT
SCALE = {
    "synth_tracks": 4,
    "synth_duration": 4.0,
    "seq_dur": 1.0,
    "nfft": 1024,
    "nhop": 256,
    "nb_workers": 0,
    "device": "cpu",
}
# "grid-axes" searches only the grid's own axes (a harder comparison: no lever the grid lacks);
# "wide" adds the learning rate, which the grid keeps at 0.001
GRID_AXES_SPACE = """
params:
  hidden_size: {type: int, low: 8, high: 48, step: 8}
  batch_size: {type: categorical, choices: [1, 2, 4, 8]}
  samples_per_track: {type: int, low: 2, high: 8}
  epochs: {type: int, low: 1, high: 5}
"""
SPACES = {
    "wide": GRID_AXES_SPACE + "  lr: {type: float, low: 1.0e-4, high: 3.0e-2, log: true}\n",
    "grid-axes": GRID_AXES_SPACE,
}


def scaled_grid() -> list[tuple[str, dict[str, Any]]]:
    """The seed grid's entries at CPU scale."""
    grid = plans.load_grid("seed", TrainConfig())
    scaled = []
    for entry in grid.entries:
        v = dict(entry.values)
        v.update(
            hidden_size=v["hidden_size"] // 16,
            samples_per_track=v["samples_per_track"] // 4,
            batch_size=max(1, v["batch_size"] // 4),
            nb_workers=0,
        )
        scaled.append((entry.name, v))
    return scaled


def train(config: TrainConfig, on_epoch: Callable[[EpochResult], None] | None = None) -> dict[str, Any]:
    """Train one config; compute counts the epochs that ran (also when on_epoch stops it)."""
    data = open_dataset(config, progress=False)
    seen: list[EpochResult] = []

    def record(result: EpochResult) -> None:
        seen.append(result)
        if on_epoch is not None:
            on_epoch(result)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        pruned = False
        try:
            Trainer(config, data, torch.device("cpu"), Path(tmp), progress=False).fit(record)
        except optuna.TrialPruned:
            pruned = True
    row = {
        "best_loss": min(r.valid_loss for r in seen),
        "epochs": len(seen),
        "samples": sum(r.samples for r in seen),
        "seconds": time.perf_counter() - started,
        "pruned": pruned,
    }
    print(f"  {config.signature()}: {row}", file=sys.stderr, flush=True)
    return row


def run_grid(base: TrainConfig) -> dict[str, Any]:
    rows = {name: train(base.replace(**values)) for name, values in scaled_grid()}
    best = min(rows, key=lambda n: rows[n]["best_loss"])
    return {
        "entries": rows,
        "best_entry": best,
        "target_loss": rows[best]["best_loss"],
        "samples": sum(r["samples"] for r in rows.values()),
        "seconds": sum(r["seconds"] for r in rows.values()),
    }


def run_search(
    base: TrainConfig, space: plans.Space, target: float, budget: int, seed: int, max_trials: int
) -> dict[str, Any]:
    """TPE + median pruning until a trial's best validation loss reaches target (or the search has
    spent `budget` training samples, the grid's own compute: then it has clearly lost)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        sampler=choices.make_sampler("tpe", seed),
        pruner=choices.make_pruner("median", choices.PrunerSettings(startup_trials=3, max_epochs=5)),
    )
    samples, seconds, trials = 0, 0.0, []
    for _ in range(max_trials):
        trial = study.ask()
        config = space.config_for(trial, base)

        def report(result: EpochResult, trial: optuna.Trial = trial) -> None:
            trial.report(result.valid_loss, result.epoch)  # as umx-tune optimize's valid_loss objective
            if trial.should_prune():
                raise optuna.TrialPruned()

        row = train(config, report)
        samples, seconds = samples + row["samples"], seconds + row["seconds"]
        if row["pruned"]:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, row["best_loss"])
        trials.append({**row, "params": trial.params})
        if (row["best_loss"] <= target and not row["pruned"]) or samples >= budget:
            break
    reached = bool(trials) and trials[-1]["best_loss"] <= target and not trials[-1]["pruned"]
    return {
        "seed": seed,
        "reached": reached,
        "trials": len(trials),
        "pruned": sum(t["pruned"] for t in trials),
        "samples": samples,
        "seconds": seconds,
        "best_loss": min(t["best_loss"] for t in trials),
        "history": trials,
    }


def efficiency(seeds: list[int], max_trials: int, space_name: str) -> dict[str, Any]:
    base = TrainConfig.from_dict(SCALE)
    open_dataset(base, progress=False)  # build the synthetic dataset before anything is timed
    grid = run_grid(base)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "space.yaml"
        path.write_text(SPACES[space_name])
        space = plans.load_space(str(path), base)
    searches = [run_search(base, space, grid["target_loss"], grid["samples"], s, max_trials) for s in seeds]
    for s in searches:
        s["samples_vs_grid"] = s["samples"] / grid["samples"]
        s["seconds_vs_grid"] = s["seconds"] / grid["seconds"]
    return {
        "scale": SCALE,
        "space": space_name,
        "grid": grid,
        "search": searches,
        "all_reached": all(s["reached"] for s in searches),
        "max_samples_vs_grid": max(s["samples_vs_grid"] for s in searches),
        "mean_samples_vs_grid": sum(s["samples_vs_grid"] for s in searches) / len(searches),
        "mean_seconds_vs_grid": sum(s["seconds_vs_grid"] for s in searches) / len(searches),
        "target": "search compute <= 0.5 x grid compute",
    }


# ------------------------------------------------------------------------------------------------
# part 2: storage overhead of real workers


class CallTimer:
    """Wraps the public methods of classes and adds up the seconds spent in them (outermost calls
    only, so that a method calling another is counted once), per group."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
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

        return timed


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
    return {
        "workers": workers,
        "trials": trials,
        "wall_seconds": max(r["wall"] for r in reports),
        "seconds_per_trial": per_trial,
        "calls_per_trial": calls,
        "storage_seconds_per_trial": per_trial["optuna"] + per_trial["mlflow_tracking"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-trials", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="at most 12 search trials per seed")
    parser.add_argument("--space", choices=sorted(SPACES), default="wide")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--profiled-worker", type=Path, default=None, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.profiled_worker is not None:
        profiled_worker(args.profiled_worker, [a for a in rest if a != "--"])
        return
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    started = time.perf_counter()
    result: dict[str, Any] = {
        "efficiency": efficiency(args.seeds, 12 if args.quick else args.max_trials, args.space),
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()},
    }
    if not args.skip_overhead:
        with tempfile.TemporaryDirectory() as one, tempfile.TemporaryDirectory() as three:
            result["storage_overhead"] = [storage_overhead(1, Path(one)), storage_overhead(3, Path(three))]
    result["benchmark_seconds"] = time.perf_counter() - started
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
