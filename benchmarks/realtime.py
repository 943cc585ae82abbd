"""Real-time factors of Open-Unmix shapes on this machine, printed as JSON.

Grid: hidden_size 256 and 512 x unidirectional / bidirectional x bandwidth 16 kHz / full band x the
thread counts asked, on 30 s of 44.1 kHz stereo audio (seeded noise: the speed does not depend on
the content), untrained weights (neither does it on their values). Offline RTF is the median of
--repeats runs of the evaluation's separation path (Wiener niter=1); streaming RTF (unidirectional
only) uses blocks of one hop, with float32 weights and, on the CPU, float16 weights too. The load
average is recorded before and after each measurement, since other processes on the machine slow it
down.

    .venv/bin/python benchmarks/realtime.py [--device cpu|cuda] [--threads 1 2] [--seconds 30]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from dataclasses import asdict

import numpy as np
import torch

from umx_tune.config import SAMPLE_RATE, STREAM_PRECISIONS, TrainConfig
from umx_tune.separation import speed as rt
from umx_tune.separation.model import build_separator, build_unmix, resolve_device
from umx_tune.separation.speed import measurement_audio

FULL_BAND = SAMPLE_RATE / 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--bandwidth", type=float, nargs="+", default=[16000.0, FULL_BAND])
    parser.add_argument("--no-sweep", dest="sweep", action="store_false", help="skip the block-size sweep")
    return parser.parse_args(argv)


def bench_one(
    config: TrainConfig, audio: np.ndarray, device: torch.device, threads: int, repeats: int
) -> dict:
    """One grid cell: the model's shape, FLOPs, the measurement and the load around it."""
    separator = build_separator(config, build_unmix(config).to(device))
    load_before = os.getloadavg()[0]
    m = rt.measure(separator, [audio], device, threads=threads, repeats=repeats)
    # streaming with the weights in float16 too, where the device runs it (m.stream is float32)
    half = "float16" in stream_precisions(device) and m.stream is not None
    stream_float16 = (
        rt.measure_stream(separator, [audio], device, threads=threads, precision="float16") if half else None
    )
    flops = rt.flops_per_audio_second(separator)
    frames_per_second = SAMPLE_RATE / config.nhop
    return {
        "hidden_size": config.hidden_size,
        "unidirectional": config.unidirectional,
        "bandwidth": config.bandwidth,
        "max_bin": rt.model_shape(separator)["max_bin"],
        "flops_per_audio_second": flops,
        "weight_bytes_per_audio_second": rt.weight_bytes(separator) * frames_per_second,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        **m.to_dict(),
        "stream_float16": asdict(stream_float16) if stream_float16 else None,
    }


def block_sweep(audio: np.ndarray, device: torch.device, hops: tuple[int, ...] = (1, 2, 4)) -> list[dict]:
    """Streaming RTF of the target model (hidden 512, unidirectional, 16 kHz, 1 thread) per block size
    and weight precision: a block of k hops multiplies each dense weight by k frames at once, so it is
    read k times less; float16 weights are half the bytes."""
    config = TrainConfig(unidirectional=True, device=device.type)
    separator = build_separator(config, build_unmix(config).to(device))
    rows = []
    for k, precision in itertools.product(hops, stream_precisions(device)):
        stream = rt.measure_stream(
            separator, [audio], device, threads=1, block=k * config.nhop, precision=precision
        )
        rows.append({**asdict(stream), "load": os.getloadavg()[0]})
    return rows


def stream_precisions(device: torch.device) -> tuple[str, ...]:
    """The streaming weight precisions the device runs: float16 is for the CPU."""
    return STREAM_PRECISIONS if device.type == "cpu" else ("float32",)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = resolve_device(args.device)
    audio = measurement_audio(None, args.seconds, 2)
    load_start = os.getloadavg()
    # the device's own peaks: on a GPU the thread count only drives the host side
    peaks = {t: rt.peak_flops(device, threads=t) for t in args.threads}
    bandwidths = {t: rt.matvec_bandwidth(device, threads=t) for t in args.threads}
    results = []
    grid = itertools.product(args.hidden, (True, False), args.bandwidth, args.threads)
    for hidden, unidirectional, bandwidth, threads in grid:
        config = TrainConfig(
            hidden_size=hidden, unidirectional=unidirectional, bandwidth=bandwidth, device=args.device
        )
        cell = bench_one(config, audio, device, threads, args.repeats)
        # what the FLOP count alone would allow: FLOPs per second of audio / measured peak FLOP/s
        cell["flops_bound_rtf"] = cell["flops_per_audio_second"] / peaks[threads]
        # what reading every weight once per frame at the measured matrix-vector speed would allow
        cell["memory_bound_rtf"] = cell["weight_bytes_per_audio_second"] / bandwidths[threads]
        results.append(cell)
        print(f"done {hidden} uni={unidirectional} bw={bandwidth:g} threads={threads}", file=sys.stderr)
    report = {
        "command": " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "processor": rt.describe_device(device),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "audio_seconds": args.seconds,
        "peak_flops": {str(t): p for t, p in peaks.items()},
        "matvec_bytes_per_second": {str(t): b for t, b in bandwidths.items()},
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
        "results": results,
        "block_sweep_hidden512_uni_16k_1thread": block_sweep(audio, device) if args.sweep else None,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
