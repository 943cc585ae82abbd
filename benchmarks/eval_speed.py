"""Speed and peak memory of museval's BSSEval v4 against umx_tune.bsseval, side by side.

    .venv/bin/python benchmarks/eval_speed.py            # 10, 30 and 60 s; 4 x 30 s on 2 processes
    .venv/bin/python benchmarks/eval_speed.py --quick    # 10 s; 4 x 10 s on 2 processes

Prints one JSON document on stdout. Every measurement runs in a fresh child process limited to one
BLAS/OpenMP thread (the variables are set in the child's environment before numpy loads), so its
peak RSS (ru_maxrss) is its own: `peak_rss_mib` is the whole process (interpreter, libraries and
the input audio included), `rss_increase_mib` what the evaluation added on top of that. Signals are
4 stereo targets at 44.1 kHz: tones with vibrato plus coloured noise; estimates are the reference
plus 10 % leakage of the other sources plus noise. The scores of both are compared as well.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
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


def score(evaluator: str, refs: np.ndarray, ests: np.ndarray) -> np.ndarray:
    """(4, nsrc, nwin) SDR, ISR, SIR, SAR with 1 s windows."""
    if evaluator == "museval":
        import museval

        return np.array(museval.evaluate(refs, ests, win=RATE, hop=RATE, mode="v4"))
    from umx_tune import bsseval

    device = "cuda" if evaluator == "fast-cuda" else None
    return np.array(bsseval.evaluate(refs, ests, RATE, RATE, device=device))


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# --- child processes ------------------------------------------------------------------------------


def child_single(evaluator: str, seconds: float, out: Path) -> dict[str, Any]:
    """Time one evaluation of one track in this (fresh) process."""
    if evaluator == "fast-cuda":
        import torch

        score(evaluator, *make_track(99, 2.0))  # CUDA context, kernels and cuFFT plans
        torch.cuda.reset_peak_memory_stats()
    import museval  # noqa: F401  (both paths load it: keep the baselines comparable)

    from umx_tune import bsseval  # noqa: F401

    refs, ests = make_track(0, seconds)
    baseline = _maxrss_mib()
    wall, cpu = time.perf_counter(), time.process_time()
    scores = score(evaluator, refs, ests)
    result = {
        "seconds": round(time.perf_counter() - wall, 3),
        "cpu_seconds": round(time.process_time() - cpu, 3),
        "peak_rss_mib": round(_maxrss_mib(), 1),
        "rss_increase_mib": round(_maxrss_mib() - baseline, 1),
    }
    if evaluator == "fast-cuda":
        import torch

        result["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        result["device"] = torch.cuda.get_device_name()
    np.save(out, scores)
    return result


def _pool_task(args: tuple[str, int, float]) -> float:
    evaluator, seed, seconds = args
    refs, ests = make_track(seed, seconds)
    start = time.perf_counter()
    score(evaluator, refs, ests)
    return time.perf_counter() - start


def child_parallel(evaluator: str, seconds: float, tracks: int, workers: int) -> dict[str, Any]:
    """Wall time of `tracks` tracks through a pool of `workers` processes (signals made in them)."""
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        per_track = list(pool.map(_pool_task, [(evaluator, seed, seconds) for seed in range(tracks)]))
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
    entry: dict[str, Any] = {"audio_seconds": seconds, "targets": NSRC, "channels": NCHAN}
    scores = {}
    for evaluator in EVALUATORS:
        out = workdir / f"{evaluator}-{seconds}.npy"
        entry[evaluator] = run_child("single", evaluator, str(seconds), str(out))
        scores[evaluator] = np.load(out)
    entry["speedup"] = round(entry["museval"]["seconds"] / entry["fast"]["seconds"], 1)
    entry["cpu_speedup"] = round(entry["museval"]["cpu_seconds"] / entry["fast"]["cpu_seconds"], 1)
    entry.update(compare(scores["fast"], scores["museval"]))
    return entry


def bench_gpu(seconds: float, workdir: Path) -> dict[str, Any] | None:
    """The torch path on CUDA, when there is a GPU, against museval's scores of the same track."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    out = workdir / f"fast-cuda-{seconds}.npy"
    entry = {"audio_seconds": seconds, **run_child("single", "fast-cuda", str(seconds), str(out))}
    reference = workdir / f"museval-{seconds}.npy"
    if reference.exists():
        entry.update(compare(np.load(out), np.load(reference)))
    return entry


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 s only, and 4 x 10 s in parallel")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, evaluator, *rest = args.child
        if kind == "single":
            result = child_single(evaluator, float(rest[0]), Path(rest[1]))
        else:
            result = child_parallel(evaluator, float(rest[0]), int(rest[1]), int(rest[2]))
        print(json.dumps(result))
        return
    durations = [10.0] if args.quick else [10.0, 30.0, 60.0]
    par_seconds, tracks, workers = (10.0 if args.quick else 30.0), 4, 2
    with tempfile.TemporaryDirectory() as tmp:
        single = [bench_single(s, Path(tmp)) for s in durations]
        parallel: dict[str, Any] = {"tracks": tracks, "audio_seconds": par_seconds, "workers": workers}
        for evaluator in EVALUATORS:
            parallel[evaluator] = run_child(
                "parallel", evaluator, str(par_seconds), str(tracks), str(workers)
            )
        parallel["speedup"] = round(parallel["museval"]["wall_seconds"] / parallel["fast"]["wall_seconds"], 1)
        gpu = bench_gpu(durations[-1] if args.quick else 30.0, Path(tmp))
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
        "gpu": gpu,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
