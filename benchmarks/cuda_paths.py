"""The CUDA paths on a GPU, checked and timed, printed as JSON.

- Training: the default config (the main job's training on the synthetic dataset) on the GPU, with
  its loss curve and epoch times, to set beside the CPU's (README, "What the main job costs").
- Offline separation of the trained model on the GPU against the CPU (the evaluation's path).
- Streaming a unidirectional hidden-512 model on the GPU against the CPU, and its block times.

    python benchmarks/cuda_paths.py [--epochs 4] [--nb-workers 0] [--seconds 10]

`benchmarks/realtime.py --device cuda` times separation on the GPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from umx_tune.config import TrainConfig
from umx_tune.data.dataset import DatasetSplits, wav_track
from umx_tune.data.synth.lifecycle import ensure_synth_dataset, track_names
from umx_tune.separation.model import build_separator, build_unmix, resolve_device
from umx_tune.separation.offline import separate
from umx_tune.separation.speed import measurement_audio
from umx_tune.separation.streaming import stream_separate
from umx_tune.training.trainer import Trainer


def relative_difference(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """max |a - b| / max |b|."""
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    return float((a - b).abs().max() / b.abs().max())


def on_device(unmix: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """A copy of unmix on device (Module.to moves in place: the CPU side keeps its own)."""
    return copy.deepcopy(unmix).to(device)


def synthetic_splits(config: TrainConfig) -> DatasetSplits:
    """The synthetic dataset's splits from its own track names, the tracks `open_dataset` lists with
    musdb, in its order; musdb reads each file's header through ffprobe, which a GPU machine may lack."""
    root = ensure_synth_dataset(config.synth_tracks, config.synth_duration, config.synth_seed)
    folders = {"train": "train", "valid": "train", "test": "test"}  # validation tracks sit in train/
    tracks = {
        split: [wav_track(root / folders[split] / name, name) for name in names]
        for split, names in track_names(config.synth_tracks).items()
    }
    return DatasetSplits(root=root, **tracks)


def train(config: TrainConfig, device: torch.device) -> tuple[dict, torch.nn.Module]:
    """Train config on device; the curve, timing and the best weights (on the CPU)."""
    data = synthetic_splits(config)
    with tempfile.TemporaryDirectory() as checkpoints:
        tic = time.perf_counter()
        result = Trainer(config, data, device, Path(checkpoints), progress=False).fit()
        seconds = time.perf_counter() - tic
    state = result.state
    report = {
        "train_loss": state.train_losses,
        "valid_loss": state.valid_losses,
        "epoch_seconds": state.epoch_seconds,
        "samples_per_second": state.samples_seen / sum(state.epoch_seconds),
        "seconds_with_statistics": seconds,
    }
    return report, result.unmix


def offline_against_cpu(
    config: TrainConfig, unmix: torch.nn.Module, device: torch.device, seconds: float
) -> dict:
    """Offline separation (Wiener niter=1) of noise on the GPU and on the CPU."""
    audio = measurement_audio(None, seconds, 2)
    on_cpu = separate(build_separator(config, unmix), audio, torch.device("cpu"))
    on_gpu = separate(build_separator(config, on_device(unmix, device)), audio, device)
    return {name: relative_difference(on_gpu[name], on_cpu[name]) for name in on_cpu}


def streaming_against_cpu(device: torch.device, seconds: float) -> dict:
    """A unidirectional hidden-512 model with random BatchNorm statistics streamed on both devices."""
    config = TrainConfig(unidirectional=True)
    torch.manual_seed(0)
    unmix = build_unmix(config)
    with torch.no_grad():
        for norm in (unmix.bn1, unmix.bn2, unmix.bn3):
            norm.running_mean.normal_(0, 0.5)
            norm.running_var.uniform_(0.5, 2.0)
    audio = torch.from_numpy(measurement_audio(None, seconds, 2))
    on_cpu = stream_separate(build_separator(config, unmix), audio)
    on_gpu = stream_separate(build_separator(config, on_device(unmix, device)), audio, device=device)
    millis = 1000 * np.asarray(on_gpu.block_seconds)
    return {
        "max_difference_over_peak": relative_difference(on_gpu.estimates, on_cpu.estimates),
        "gpu_block_ms_median": float(np.median(millis)),
        "gpu_block_ms_p99": float(np.percentile(millis, 99)),
        "cpu_block_ms_median": float(np.median(1000 * np.asarray(on_cpu.block_seconds))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=TrainConfig().epochs)
    parser.add_argument("--nb-workers", type=int, default=TrainConfig().nb_workers, help="DataLoader workers")
    parser.add_argument("--seconds", type=float, default=10.0, help="audio for the separation checks")
    args = parser.parse_args()
    device = resolve_device("cuda")
    config = TrainConfig(device="cuda", epochs=args.epochs, nb_workers=args.nb_workers)
    training, unmix = train(config, device)
    report = {
        "gpu": torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "config": config.to_params(),
        "training": training,
        "offline_separation_gpu_vs_cpu": offline_against_cpu(config, unmix, device, args.seconds),
        "streaming_gpu_vs_cpu": streaming_against_cpu(device, args.seconds),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
