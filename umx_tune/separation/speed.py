"""How fast a separator runs: real-time factors offline and streaming, latency, and a FLOP count.

RTF = processing time / audio duration; below 1 a model separates faster than the audio plays.
- Offline: `separation.separate` (the path the evaluation uses: STFT, network, Wiener filter with the
  Separator's niter, ISTFT, host/device copies) on whole clips.
- Streaming (unidirectional models): `streaming.stream_separate`, blocks of `block` samples; its RTF
  is the sum of the per-block compute times over the audio duration, and the block times' median and
  99th percentile show whether each block is done before the next one arrives.
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from openunmix.model import Separator

from umx_tune.config import SAMPLE_RATE
from umx_tune.data.dataset import Track
from umx_tune.errors import ConfigError
from umx_tune.separation.offline import separate
from umx_tune.separation.streaming import (
    check_block,
    check_streamable,
    delay_samples,
    latency_ms,
    stream_separate,
)
from umx_tune.separation.streaming_net import check_precision

# The pipeline's probe separates this much of the test tracks: enough for a stable number, cheap
# next to training and evaluation.
PROBE_SECONDS = 10.0
# ... separated this many times, the fastest pass counted: one pass of a short test set is a fraction
# of a second of CPU, which a busy machine's cache misses and preemptions (and a process's first
# passes) stretch by up to a quarter, never shrink (measured: 10 passes of 0.19 to 0.27 s alone)
PROBE_REPEATS = 5
WARMUP_SECONDS = 1.0
CPU = torch.device("cpu")


@dataclass(frozen=True)
class StreamMeasurement:
    """Streaming speed and latency for one block size."""

    block: int
    precision: str  # of the streaming network's weights, one of config.STREAM_PRECISIONS
    rtf: float
    latency_ms: float
    delay_ms: float
    block_ms_median: float
    block_ms_p99: float
    block_budget_ms: float  # the block's duration: its compute must finish within it
    rtf_cpu: float  # as rtf, from the calling thread's CPU time (see Measurement.rtf_cpu)


@dataclass(frozen=True)
class Measurement:
    """Speed of one separator on one device with one thread count."""

    device: str
    processor: str
    threads: int
    audio_seconds: float
    rtf: float
    # the calling thread's CPU time / audio duration: with threads=1 the compute alone, barely
    # touched by other processes on a shared machine (their cache and memory traffic still count);
    # with more threads it leaves out the other threads' share
    rtf_cpu: float
    stream: StreamMeasurement | None

    @property
    def rtf_compute(self) -> float:
        """The RTF a study compares: on one CPU thread its CPU time, which other processes on the
        machine barely change (its wall time can grow several times); otherwise the wall time."""
        return self.rtf_cpu if self.device == "cpu" and self.threads == 1 else self.rtf

    def to_dict(self) -> dict:
        return {**asdict(self), "rtf_compute": self.rtf_compute}


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op thread count set to threads for the block, restored after."""
    if threads <= 0:
        raise ConfigError(f"threads={threads} must be >= 1")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def describe_device(device: torch.device) -> str:
    """The processor behind a device: the CPU model name or the GPU's name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def is_unidirectional(separator: Separator) -> bool:
    return not any(unmix.lstm.bidirectional for unmix in separator.target_models.values())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def offline_seconds(
    separator: Separator, clips: Sequence[np.ndarray], device: torch.device
) -> tuple[float, float]:
    """Wall and calling-thread CPU time of separating each clip (nb_channels, nb_samples) offline."""
    wall = cpu = 0.0
    for clip in clips:
        _sync(device)
        tic, cpu_tic = time.perf_counter(), time.thread_time()
        separate(separator, clip, device)  # returns numpy on the CPU, so the GPU has finished
        wall += time.perf_counter() - tic
        cpu += time.thread_time() - cpu_tic
    return wall, cpu


def streaming_block_seconds(
    separator: Separator, clips: Sequence[np.ndarray], device: torch.device, block: int, precision: str
) -> tuple[list[float], list[float]]:
    """Per-block wall and calling-thread CPU times of streaming each clip (a fresh stream per clip)."""
    wall: list[float] = []
    cpu: list[float] = []
    for clip in clips:
        result = stream_separate(separator, torch.from_numpy(clip), block, device, precision)
        wall += result.block_seconds
        cpu += result.block_cpu_seconds
    return wall, cpu


def _warm_up_clips(separator: Separator, clips: Sequence[np.ndarray]) -> list[np.ndarray]:
    """A short untimed clip for a first pass: first calls allocate, load kernels and tune."""
    return [clips[0][:, : int(WARMUP_SECONDS * float(separator.sample_rate))]]


def stream_block(separator: Separator, block: int | None, stream: bool | None) -> int | None:
    """The block size to stream with, or None for no streaming.

    stream=None streams when the model can (unidirectional); stream=True on a bidirectional model
    is a ModelError. A given block must be a multiple of the hop even when nothing streams.
    """
    nhop = int(separator.stft.n_hop)
    if block is not None:
        check_block(block, nhop)
    if stream is None:
        stream = is_unidirectional(separator)
    if not stream:
        return None
    check_streamable(separator)
    return block or nhop


def measure(
    separator: Separator,
    clips: Sequence[np.ndarray],
    device: torch.device,
    *,
    threads: int,
    block: int | None = None,
    stream: bool | None = None,
    precision: str = "float32",
    repeats: int = 1,
) -> Measurement:
    """Offline RTF (the fastest of repeats: timing noise only adds) and, when streaming,
    `measure_stream`'s measurement.

    clips: audio excerpts (nb_channels, nb_samples), each separated (and streamed) on its own.
    """
    block = stream_block(separator, block, stream)
    check_precision(precision, device)
    rate = float(separator.sample_rate)
    audio_seconds = sum(clip.shape[-1] for clip in clips) / rate
    with torch_threads(threads):
        offline_seconds(separator, _warm_up_clips(separator, clips), device)
        wall, cpu = np.min([offline_seconds(separator, clips, device) for _ in range(repeats)], axis=0)
    streamed = None
    if block is not None:
        streamed = measure_stream(separator, clips, device, threads=threads, block=block, precision=precision)
    return Measurement(
        device=str(device),
        processor=describe_device(device),
        threads=threads,
        audio_seconds=audio_seconds,
        rtf=float(wall) / audio_seconds,
        rtf_cpu=float(cpu) / audio_seconds,
        stream=streamed,
    )


def measure_stream(
    separator: Separator,
    clips: Sequence[np.ndarray],
    device: torch.device,
    *,
    threads: int,
    block: int | None = None,
    precision: str = "float32",
) -> StreamMeasurement:
    """Streaming speed alone: blocks of `block` samples (default one hop), weights in `precision`."""
    check_streamable(separator)
    nhop = int(separator.stft.n_hop)
    block = check_block(nhop if block is None else block, nhop)
    check_precision(precision, device)
    with torch_threads(threads):
        streaming_block_seconds(separator, _warm_up_clips(separator, clips), device, block, precision)
        wall, cpu = streaming_block_seconds(separator, clips, device, block, precision)
    return _stream_measurement(separator, wall, cpu, block, precision)


def _stream_measurement(
    separator: Separator,
    block_seconds: list[float],
    block_cpu_seconds: list[float],
    block: int,
    precision: str,
) -> StreamMeasurement:
    rate = float(separator.sample_rate)
    nfft, nhop = int(separator.stft.n_fft), int(separator.stft.n_hop)
    budget = block / rate
    millis = 1000.0 * np.asarray(block_seconds)
    return StreamMeasurement(
        block=block,
        precision=precision,
        rtf=float(np.mean(block_seconds)) / budget,  # every block, the flushing ones included
        latency_ms=latency_ms(nfft, nhop, block, rate),
        delay_ms=1000.0 * delay_samples(nfft, nhop) / rate,
        block_ms_median=float(np.median(millis)),
        block_ms_p99=float(np.percentile(millis, 99)),
        block_budget_ms=1000.0 * budget,
        rtf_cpu=float(np.mean(block_cpu_seconds)) / budget,
    )


def probe_clips(tracks: Sequence[Track], seconds: float = PROBE_SECONDS) -> list[np.ndarray]:
    """The first `seconds` of the tracks' mixtures, taken track after track: (nb_channels, nb_samples)."""
    clips: list[np.ndarray] = []
    left = int(seconds * SAMPLE_RATE)
    for track in tracks:
        if left <= 0:
            break
        frames = min(left, track.nb_frames)
        clips.append(track.read("mixture", frames=frames))
        left -= frames
    return clips


def probe(separator: Separator, tracks: Sequence[Track], device: torch.device) -> Measurement:
    """The pipeline's probe: RTF of up to PROBE_SECONDS of the test tracks on one thread (the fastest
    of PROBE_REPEATS passes), so that every run of a study is measured alike (whatever its share of
    the cores) and its rtf_compute is load-robust."""
    return measure(separator, probe_clips(tracks), device, threads=1, repeats=PROBE_REPEATS)


def nb_model_channels(separator: Separator) -> int:
    """Audio channels the networks take, from fc1's width (nb_channels * max_bin)."""
    unmix = next(iter(separator.target_models.values()))
    return int(unmix.fc1.in_features // unmix.nb_bins)


def flops_per_frame(separator: Separator) -> float:
    """Floating-point operations to separate one STFT frame (one hop of audio).

    Every weight matrix (fc1, fc2, fc3, each LSTM layer's and direction's input and hidden weights)
    is used once per frame: 2 FLOPs (multiply, add) per element. Each real FFT of nfft points costs
    about 2.5 nfft log2(nfft): one forward per channel, one inverse per channel and source.
    Elementwise work (BatchNorm, activations, masking) and the Wiener EM iterations are not counted.
    """
    weights = sum(
        p.numel() for unmix in separator.target_models.values() for p in unmix.parameters() if p.dim() == 2
    )
    nfft = int(separator.stft.n_fft)
    nb_sources = len(separator.target_models) + int(separator.residual)
    ffts = nb_model_channels(separator) * (1 + nb_sources)
    return 2.0 * weights + ffts * 2.5 * nfft * math.log2(nfft)


def flops_per_audio_second(separator: Separator) -> float:
    """FLOPs to separate one second of audio (frames per second x flops_per_frame)."""
    return flops_per_frame(separator) * float(separator.sample_rate) / int(separator.stft.n_hop)


def _best_seconds(run: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Shortest of `repeats` timed calls of run on device, after one untimed call (it sizes buffers)."""
    run()
    best = math.inf
    for _ in range(repeats):
        _sync(device)
        tic = time.perf_counter()
        run()
        _sync(device)
        best = min(best, time.perf_counter() - tic)
    return best


def peak_flops(
    device: torch.device = CPU, threads: int = 1, size: int | None = None, repeats: int = 10
) -> float:
    """Measured float32 FLOP/s of a square matmul on device with `threads` torch threads (best of
    repeats); 1024 x 1024 on the CPU, 8192 x 8192 on a GPU (smaller ones leave it idle)."""
    size = size or (1024 if device.type == "cpu" else 8192)
    with torch_threads(threads):
        a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
        return 2.0 * size**3 / _best_seconds(lambda: a @ b, device, repeats)


def matvec_bandwidth(
    device: torch.device = CPU, threads: int = 1, size: int | None = None, repeats: int = 10
) -> float:
    """Measured bytes/s of a float32 matrix-vector product too large for the caches (best of repeats):
    4096 x 4096 (67 MB) on the CPU, 16384 x 16384 (1 GB) on a GPU.

    A block of one frame multiplies every weight matrix by one vector, reading each weight once for
    2 FLOPs: that speed, not the matmul peak, bounds streaming.
    """
    size = size or (4096 if device.type == "cpu" else 16384)
    with torch_threads(threads):
        matrix, vector = torch.randn(size, size, device=device), torch.randn(size, device=device)
        return 4.0 * size * size / _best_seconds(lambda: matrix @ vector, device, repeats)


def weight_bytes(separator: Separator) -> int:
    """Bytes of the weight matrices every frame reads (float32), as counted in flops_per_frame."""
    matrices = (p for unmix in separator.target_models.values() for p in unmix.parameters() if p.dim() == 2)
    return sum(4 * p.numel() for p in matrices)


def model_shape(separator: Separator) -> dict[str, object]:
    """The model's speed-relevant shape, as the report shows it."""
    unmix = next(iter(separator.target_models.values()))
    return {
        "targets": list(separator.target_models.keys()),
        "hidden_size": int(unmix.hidden_size),
        "unidirectional": is_unidirectional(separator),
        "nfft": int(separator.stft.n_fft),
        "nhop": int(separator.stft.n_hop),
        "nb_bins": int(unmix.nb_output_bins),
        "max_bin": int(unmix.nb_bins),
        "nb_channels": nb_model_channels(separator),
        "niter_offline": int(separator.niter),
    }


def measurement_audio(path: Path | None, seconds: float, nb_channels: int) -> np.ndarray:
    """(nb_channels, nb_samples) float32: the file's first `seconds`, or seeded noise that long."""
    if path is None:
        # Speed does not depend on the signal's content; noise makes the run reproducible anywhere.
        noise = np.random.default_rng(0).standard_normal((nb_channels, int(seconds * SAMPLE_RATE)))
        return (0.1 * noise).astype(np.float32)
    from umx_tune.data.audio import read_audio

    return read_audio(path, nb_channels)[:, : int(seconds * SAMPLE_RATE)]
