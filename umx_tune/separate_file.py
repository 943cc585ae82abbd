"""`umx-tune separate`: one audio file through a logged model, written as WAV files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from openunmix.model import Separator

from umx_tune.config import SAMPLE_RATE
from umx_tune.errors import DatasetError
from umx_tune.loading import load_separator
from umx_tune.model import resolve_device
from umx_tune.separation import residual_name, separate
from umx_tune.streaming import stream_separate


def read_audio(path: Path, nb_channels: int = 2) -> np.ndarray:
    """A 44.1 kHz audio file as float32 (nb_channels, nb_samples); mono is duplicated to stereo."""
    try:
        audio, rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise DatasetError(f"cannot read audio file {path}: {err}") from None
    if rate != SAMPLE_RATE:
        raise DatasetError(f"{path} has sample rate {rate} Hz; umx-tune models take {SAMPLE_RATE} Hz")
    if audio.shape[0] == 0:
        raise DatasetError(f"{path} holds no audio")
    if audio.shape[1] == 1 and nb_channels == 2:
        audio = np.repeat(audio, 2, axis=1)
    return np.ascontiguousarray(audio.T)


def separate_file(
    model_ref: str,
    audio_path: Path,
    out: Path,
    device_name: str = "auto",
    *,
    stream: bool = False,
    block: int | None = None,
    precision: str = "float32",
) -> list[Path]:
    """Write `<stem>_<target>.wav` and `<stem>_<residual>.wav` into out; return their paths.

    stream separates block by block as `streaming.StreamingSeparator` does live (niter=0, causal),
    with the streaming network's weights in `precision`.
    """
    device = resolve_device(device_name)
    separator = load_separator(model_ref, device)
    audio = read_audio(audio_path)
    if stream:
        estimates = stream_estimates(separator, audio, block, device, precision)
    else:
        estimates = separate(separator, audio, device)
    target = next(iter(separator.target_models))
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, label in ((target, target), ("residual", residual_name(target))):
        path = out / f"{audio_path.stem}_{label}.wav"
        sf.write(path, estimates[name], SAMPLE_RATE, subtype="FLOAT")
        written.append(path)
    return written


def stream_estimates(
    separator: Separator, audio: np.ndarray, block: int | None, device: torch.device, precision: str
) -> dict[str, np.ndarray]:
    """Streamed separation of (nb_channels, nb_samples), as `separate` returns it: {name: (nb_samples,
    nb_channels)}."""
    result = stream_separate(separator, torch.from_numpy(audio), block, device, precision)
    # (nb_sources, nb_channels, nb_samples) -> per source (nb_samples, nb_channels), as soundfile writes
    return {name: result.estimates[k].T.numpy() for k, name in enumerate(result.names)}
