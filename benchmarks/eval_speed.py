"""Speed and peak memory of museval's BSSEval v4 against umx_tune.evaluation.bsseval, side by side.

    .venv/bin/python benchmarks/eval_speed.py            # 10, 30 and 60 s; 4 x 30 s on 2 processes
    .venv/bin/python benchmarks/eval_speed.py --quick    # 10 s; 4 x 10 s on 2 processes

Prints one JSON document on stdout. Every measurement runs in a fresh child process limited to one
BLAS/OpenMP thread (the variables are set in the child's environment before numpy loads). The
child loads the track (written once by the parent, so both evaluators see the same arrays), resets
the kernel's peak-RSS mark (/proc/self/clear_refs) and reads it back after the evaluation:
`peak_rss_mib` is then the process's peak during the evaluation, `rss_before_mib` what it held
before (interpreter, libraries, the input audio) and `rss_increase_mib` the difference. Signals are
4 stereo targets at 44.1 kHz: tones with vibrato plus coloured noise; estimates are the reference
plus 10 % leakage of the other sources plus noise. The scores of both are compared as well. The
`parallel` case runs 4 tracks through a pool of 2 processes forked with the libraries loaded.
Wall-clock figures depend on what else the machine runs; `cpu_seconds` much less so.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

RATE = 44100
NSRC = 4
NCHAN = 2
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")
EVALUATORS = ("museval", "fast")


# --- signals and scoring --------------------------------------------------------------------------


def make_track(seed: int, seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """References and estimates (NSRC, nsamples, NCHAN) of an audio-like synthetic track."""
    from scipy.signal import butter, lfilter

    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE

    def coloured() -> np.ndarray:
        b, a = butter(4, rng.uniform(0.05, 0.4))
        return lfilter(b, a, rng.standard_normal(n))

    def source() -> np.ndarray:
        f0 = 110.0 * 2 ** (rng.integers(0, 24) / 12)
        phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.01 * np.sin(2 * np.pi * 5.5 * t))) / RATE
        tone = sum(np.sin(k * phase + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 12))
        mono = 0.3 * tone + 0.5 * coloured()
        chans = [
            rng.uniform(0.5, 1) * mono + 0.1 * coloured() + 1e-3 * rng.standard_normal(n)
            for _ in range(NCHAN)
        ]
        return np.stack(chans, axis=1)

    refs = np.stack([source() for _ in range(NSRC)])
    leak = refs.sum(axis=0, keepdims=True) - refs
    return refs, refs + 0.1 * leak + 0.02 * rng.standard_normal(refs.shape)


def save_track(path: Path, seed: int, seconds: float) -> None:
    refs, ests = make_track(seed, seconds)
    np.save(path.with_suffix(".refs.npy"), refs)
    np.save(path.with_suffix(".ests.npy"), ests)


def load_track(path: Path) -> tuple[np.ndarray, np.ndarray]:
    return np.load(path.with_suffix(".refs.npy")), np.load(path.with_suffix(".ests.npy"))


def score(evaluator: str, refs: np.ndarray, ests: np.ndarray) -> np.ndarray:
    """(4, nsrc, nwin) SDR, ISR, SIR, SAR with 1 s windows."""
    if evaluator == "museval":
        import museval

        return np.array(museval.evaluate(refs, ests, win=RATE, hop=RATE, mode="v4"))
    from umx_tune.evaluation import bsseval

    return np.array(bsseval.evaluate(refs, ests, RATE, RATE))


# --- child processes ------------------------------------------------------------------------------


def _memory_mib() -> dict[str, float]:
    """Current (VmRSS) and peak (VmHWM) resident memory of this process, from /proc."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024  # kB
    return fields


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the peak read later is the evaluation's."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def child_single(evaluator: str, track: Path, out: Path) -> dict[str, Any]:
    """Time one evaluation of one track in this (fresh) process, and its peak memory."""
    import museval  # noqa: F401  (both paths load it: keep the baselines comparable)

    from umx_tune.evaluation import bsseval  # noqa: F401

    refs, ests = load_track(track)
    reset = _reset_peak()
    before = _memory_mib()["VmRSS"]
    wall, cpu = time.perf_counter(), time.process_time()
    scores = score(evaluator, refs, ests)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak = _memory_mib()["VmHWM"]
    result: dict[str, Any] = {
        "seconds": round(wall, 3),
        "cpu_seconds": round(cpu, 3),
        "rss_before_mib": round(before, 1),
        "peak_rss_mib": round(peak, 1),
        "rss_increase_mib": round(peak - before, 1),
        "peak_is_the_evaluations": reset,  # False: the process's lifetime peak (no clear_refs)
    }
    np.save(out, scores)
    return result


def _pool_task(job: tuple[str, str]) -> float:
    evaluator, track = job
    refs, ests = load_track(Path(track))
    start = time.perf_counter()
    score(evaluator, refs, ests)
    return time.perf_counter() - start


def child_parallel(evaluator: str, workers: int, tracks: list[Path]) -> dict[str, Any]:
    """Wall time of the tracks through a pool of `workers` processes forked with all loaded."""
    import museval  # noqa: F401  (imported before the fork, so no worker pays for it)

    from umx_tune.evaluation import bsseval  # noqa: F401

    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork")) as pool:
        per_track = list(pool.map(_pool_task, [(evaluator, str(t)) for t in tracks]))
    return {
        "wall_seconds": round(time.perf_counter() - start, 3),
        "evaluation_seconds_per_track": [round(s, 3) for s in per_track],
    }


# --- parent -------------------------------------------------------------------------------------


def run_child(*args: str) -> dict[str, Any]:
    """Run this script as a one-thread child and return the JSON it prints."""
    env = {**os.environ, **dict.fromkeys(THREAD_VARS, "1")}
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, __file__, "--child", *args], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Largest difference of finite scores and whether NaN/inf fall in the same places."""
    finite = np.isfinite(a) & np.isfinite(b)
    return {
        "max_abs_diff_db": float(np.max(np.abs(a[finite] - b[finite]), initial=0.0)),
        "nonfinite_agree": bool(np.array_equal(np.isfinite(a), np.isfinite(b))),
    }


def bench_single(seconds: float, workdir: Path) -> dict[str, Any]:
    """Both evaluators on one track, each in its own process."""
    entry: dict[str, Any] = {"audio_seconds": seconds, "targets": NSRC, "channels": NCHAN}
    track = workdir / f"single-{seconds}"
    save_track(track, 0, seconds)
    scores = {}
    for evaluator in EVALUATORS:
        out = workdir / f"{evaluator}-{seconds}.npy"
        entry[evaluator] = run_child("single", evaluator, str(track), str(out))
        scores[evaluator] = np.load(out)
    entry["speedup"] = round(entry["museval"]["seconds"] / entry["fast"]["seconds"], 1)
    entry["cpu_speedup"] = round(entry["museval"]["cpu_seconds"] / entry["fast"]["cpu_seconds"], 1)
    entry.update(compare(scores["fast"], scores["museval"]))
    return entry


def bench_parallel(seconds: float, tracks: int, workers: int, workdir: Path) -> dict[str, Any]:
    """Wall time of several tracks through a process pool, for each evaluator."""
    paths = [workdir / f"parallel-{seed}-{seconds}" for seed in range(tracks)]
    for seed, path in enumerate(paths):
        save_track(path, seed, seconds)
    entry: dict[str, Any] = {"tracks": tracks, "audio_seconds": seconds, "workers": workers}
    for evaluator in EVALUATORS:
        entry[evaluator] = run_child("parallel", evaluator, str(workers), *map(str, paths))
    entry["speedup"] = round(entry["museval"]["wall_seconds"] / entry["fast"]["wall_seconds"], 1)
    return entry


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 s only, and 4 x 10 s in parallel")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, evaluator, *rest = args.child
        if kind == "single":
            result = child_single(evaluator, Path(rest[0]), Path(rest[1]))
        else:
            result = child_parallel(evaluator, int(rest[0]), [Path(p) for p in rest[1:]])
        print(json.dumps(result))
        return
    durations = [10.0] if args.quick else [10.0, 30.0, 60.0]
    with tempfile.TemporaryDirectory() as tmp:
        single = [bench_single(s, Path(tmp)) for s in durations]
        parallel = bench_parallel(10.0 if args.quick else 30.0, 4, 2, Path(tmp))
    report = {
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(),
            "numpy": np.__version__,
        },
        "threads_per_process": 1,
        "single": single,
        "parallel": parallel,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
