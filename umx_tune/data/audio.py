"""Reading audio files as umx-tune's models take them, and writing separated estimates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from umx_tune.config import SAMPLE_RATE
from umx_tune.errors import DatasetError

# the formats `separate` writes, by extension, with their sample format: WAV keeps the float
# estimates as they are; FLAC holds integers only, 24 bits being its finest
AUDIO_FORMATS = {"wav": "FLOAT", "flac": "PCM_24"}


def read_audio(path: Path, nb_channels: int = 2) -> np.ndarray:
    """A 44.1 kHz audio file as float32 (nb_channels, nb_samples); mono is duplicated to stereo."""
    audio, rate = read_excerpt(path, nb_channels=nb_channels)
    if rate != SAMPLE_RATE:
        raise DatasetError(f"{path} has sample rate {rate} Hz; umx-tune models take {SAMPLE_RATE} Hz")
    return audio


def read_excerpt(
    path: Path, start: float = 0.0, duration: float | None = None, nb_channels: int = 2
) -> tuple[np.ndarray, int]:
    """duration seconds (None or negative: to the end) from start seconds of an audio file at its own
    rate: float32 (nb_channels, nb_samples) and the rate; mono is duplicated to stereo."""
    try:
        info = sf.info(str(path))
        first = int(round(start * info.samplerate))
        if first and first >= info.frames:
            raise DatasetError(
                f"start {start:g} s is beyond the end of {path} ({info.frames / info.samplerate:.2f} s long)"
            )
        frames = -1 if duration is None or duration < 0 else int(round(duration * info.samplerate))
        audio, rate = sf.read(path, start=first, frames=frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise DatasetError(f"cannot read audio file {path}: {err}") from None
    if audio.shape[0] == 0:
        raise DatasetError(f"{path} holds no audio")
    if audio.shape[1] > 2:
        raise DatasetError(f"{path} has {audio.shape[1]} channels; umx-tune models take mono or stereo")
    if audio.shape[1] == 1 and nb_channels == 2:
        audio = np.repeat(audio, 2, axis=1)
    return np.ascontiguousarray(audio.T), rate


def write_audio(path: Path, audio: np.ndarray, rate: int) -> None:
    """Write (nb_samples, nb_channels) audio in the format of path's extension (AUDIO_FORMATS)."""
    sf.write(path, audio, rate, subtype=AUDIO_FORMATS[path.suffix.lstrip(".")])
