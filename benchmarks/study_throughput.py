"""Study throughput: one small fixed grid run by 1, 2 and 3 local `umx-tune optimize` workers.

Six CPU-sized grid entries (they differ in hidden size and batch size, as the seed grid's do) are
run by N workers sharing one study, against a real `mlflow server` on 127.0.0.1 and a sqlite Optuna
storage, each N twice: with the threads the default rule gives (umx_tune/cores.py: this machine's
cores divided by the umx-tune processes running) and, for contrast, with every worker using all
cores (`--threads <cores>`, what every process did before the rule). The figure is the grid's
wall time from the first worker's start to the last one's end; with `--repeats K` each is measured
K times, the rounds interleaved (1, 2, 3 workers, then again) so that a drift of the machine's speed
reaches every count alike, and the ratios are those of the medians.

Then the load-robust timings: one shape trained by `umx-tune train --threads 1` alone, and again
beside a competing `umx-tune train` on all cores, `--load-repeats` times each (their medians
compared: one run's measures vary by about a tenth on a quiet machine); its compute measures
(`rtf_compute`, `train_compute_seconds`) should agree within 20% where its wall times (`rtf`,
`train_seconds`) need not.

Targets (issue 16): 2 workers on 2 cores finish in at most 0.75 of one worker's time; 3 workers are
never slower than 2; compute measures within 20% under load. Run it on a quiet machine: anything
else running shares the same cores.

    .venv/bin/python benchmarks/study_throughput.py --out benchmarks/study_throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from servers import BIN, start_server

from umx_tune import cores

# six entries of 10 to 25 seconds each on one core, most of it training (with 2 epochs of 8
# samples per track the trials took 3 to 5 s, and the workers' start and the study's conclusion,
# which do not run in parallel, were most of a grid's time)
GRID = """description: study_throughput benchmark grid
entries:
  h32-b4:  {hidden_size: 32, batch_size: 4}
  h32-b8:  {hidden_size: 32, batch_size: 8}
  h64-b4:  {hidden_size: 64, batch_size: 4}
  h64-b8:  {hidden_size: 64, batch_size: 8}
  h96-b4:  {hidden_size: 96, batch_size: 4}
  h96-b8:  {hidden_size: 96, batch_size: 8}
"""
BASE = ["--epochs", "3", "--samples-per-track", "48", "--seq-dur", "1", "--nfft", "1024", "--nhop", "256"]
BASE += ["--synth-tracks", "4", "--synth-duration", "4", "--device", "cpu", "--no-audio"]
BASE += ["--no-system-metrics", "--nb-workers", "0"]


def run_grid(root: Path, uri: str, workers: int, threads: int | None, tag: str) -> dict[str, Any]:
    """The grid's wall time with `workers` worker processes (threads None: the default rule)."""
    grid = root / "grid.yaml"
    grid.write_text(GRID)
    argv = [str(BIN / "umx-tune"), "optimize", "--grid", str(grid), "--study-name", tag, "--quiet"]
    argv += ["--storage", f"sqlite:///{root / 'optuna.db'}", "--heartbeat-interval", "10", *BASE]
    if threads is not None:
        argv += ["--threads", str(threads)]
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    env.pop(cores.THREADS_ENV, None)
    start = time.perf_counter()
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE, "text": True}
    procs = [subprocess.Popen(argv, env=env, cwd=root, **quiet) for _ in range(workers)]
    for process in procs:
        _, err = process.communicate(timeout=3600)
        if process.returncode != 0:
            raise RuntimeError(f"worker failed ({process.returncode}): {err.strip()[-2000:]}")
    return {
        "workers": workers,
        "threads": "default rule" if threads is None else f"{threads} each (all cores)",
        "wall_seconds": round(time.perf_counter() - start, 1),
        "load_after": round(os.getloadavg()[0], 2),
    }


COMPARED = {
    "rtf_compute": "rtf",
    "train_compute_seconds": "train_seconds",
}


def train_metrics(uri: str, name: str, extra: list[str]) -> dict[str, float]:
    """`umx-tune train` of the benchmark's shape on one thread; the metrics its run logged."""
    import mlflow

    argv = [str(BIN / "umx-tune"), "train", "--quiet", "--run-name", name, "--threads", "1", *BASE, *extra]
    subprocess.run(argv, env={**os.environ, "MLFLOW_TRACKING_URI": uri}, check=True, capture_output=True)
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], f"attributes.run_name = '{name}'"
    )
    return dict(runs[0].data.metrics)


def load_robustness(uri: str, repeats: int) -> dict[str, Any]:
    """The same shape trained `repeats` times alone, then `repeats` times beside a competing training
    process on all cores; the medians compared (one run's measures vary by about a tenth alone)."""
    shape = ["--hidden-size", "128", "--epochs", "3", "--samples-per-track", "16"]
    alone = [train_metrics(uri, f"alone-{i}", shape) for i in range(repeats)]
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, cores.THREADS_ENV: str(cores.machine_cores())}
    competing = [str(BIN / "umx-tune"), "train", "--quiet", "--run-name", "competing", *BASE]
    competing += ["--hidden-size", "512", "--epochs", "200", "--samples-per-track", "32"]
    rival = subprocess.Popen(competing, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(30)  # past its data set-up, training on every core
        beside = [train_metrics(uri, f"beside-{i}", shape) for i in range(repeats)]
        load = os.getloadavg()[0]
    finally:
        rival.kill()
        rival.wait()
    names = [name for pair in COMPARED.items() for name in pair]

    def summary(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
        return {
            name: {
                "median": round(statistics.median(r[name] for r in runs), 4),
                "min": round(min(r[name] for r in runs), 4),
                "max": round(max(r[name] for r in runs), 4),
            }
            for name in names
        }

    alone_summary, beside_summary = summary(alone), summary(beside)
    return {
        "runs_each": repeats,
        "alone": alone_summary,
        "beside_competitor": beside_summary,
        "ratio_of_medians_beside_over_alone": {
            name: round(beside_summary[name]["median"] / alone_summary[name]["median"], 3) for name in names
        },
        "load_average_beside": round(load, 2),
        "target": "compute measures' ratios within 0.8 to 1.2",
    }


def warm_cache() -> None:
    """Build the synthetic dataset once (in UMX_TUNE_CACHE), so that no timed grid pays for it."""
    from umx_tune.data.synth.lifecycle import ensure_synth_dataset

    ensure_synth_dataset(4, 4.0, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--no-load-test", action="store_true", help="leave out the load-robustness part")
    parser.add_argument("--no-contrast", action="store_true", help="leave out the all-cores-each runs")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of every worker count")
    parser.add_argument("--load-repeats", type=int, default=3, help="runs alone and beside the competitor")
    args = parser.parse_args()
    machine = cores.machine_cores()
    results = []
    with tempfile.TemporaryDirectory(prefix="umx-throughput-") as tmp:
        root = Path(tmp)
        os.environ["UMX_TUNE_CACHE"] = str(root / "cache")  # the workers' registry and dataset
        server, uri = start_server(root)
        try:
            load_before = os.getloadavg()[0]
            warm_cache()
            for mode in (None,) if args.no_contrast else (None, machine):
                for repeat in range(args.repeats):
                    for workers in args.workers:
                        tag = f"w{workers}-{'default' if mode is None else 'all'}-{repeat}"
                        results.append(run_grid(root, uri, workers, mode, tag))
                        print(json.dumps(results[-1]), file=sys.stderr)
            robust = load_robustness(uri, args.load_repeats) if not args.no_load_test else None
        finally:
            server.terminate()
            server.wait()
    default = {
        workers: statistics.median(
            r["wall_seconds"] for r in results if r["threads"] == "default rule" and r["workers"] == workers
        )
        for workers in args.workers
    }
    report = {
        "machine": {"cores": machine, "load_before": round(load_before, 2)},
        "grid_entries": GRID.count("{hidden_size"),
        "results": results,
        "default_rule_median_seconds": default,
        "default_rule": {
            "two_over_one": round(default[2] / default[1], 3) if {1, 2} <= default.keys() else None,
            "three_over_two": round(default[3] / default[2], 3) if {2, 3} <= default.keys() else None,
        },
        "targets": {"two_over_one": "<= 0.75", "three_over_two": "<= 1.0"},
        "load_robust_timings": robust,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
