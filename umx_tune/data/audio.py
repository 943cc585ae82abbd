"""Reading audio files as umx-tune's models take them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from umx_tune.config import SAMPLE_RATE
from umx_tune.errors import DatasetError


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
