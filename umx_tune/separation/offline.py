"""Offline separation of one mixture with a Separator (the path evaluation, `separate` and the
real-time measurement share; no museval, no MLflow), and writing the estimates as WAV files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from openunmix.model import Separator

from umx_tune.config import SAMPLE_RATE


def residual_name(target: str) -> str:
    """Name of the residual estimate: musdb's 'accompaniment' for vocals, else 'residual'."""
    return "accompaniment" if target == "vocals" else "residual"


def separate(separator: Separator, audio: np.ndarray, device: torch.device) -> dict[str, np.ndarray]:
    """Separate a mixture (nb_channels, nb_samples) into {name: (nb_samples, nb_channels)} float32."""
    with torch.no_grad():
        mix = torch.as_tensor(audio, dtype=torch.float32, device=device)[None]
        estimates = separator(mix)  # (1, nb_targets + residual, nb_channels, nb_samples)
    names = [*separator.target_models.keys(), "residual"]
    return {name: estimates[0, k].T.cpu().numpy() for k, name in enumerate(names)}


def write_estimates(estimates: dict[str, np.ndarray], target: str, stem: str, out: Path) -> list[Path]:
    """Write `<stem>_<target>.wav` and `<stem>_<residual>.wav` (estimates as `separate` returns
    them) into out as float WAV; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, label in ((target, target), ("residual", residual_name(target))):
        path = out / f"{stem}_{label}.wav"
        sf.write(path, estimates[name], SAMPLE_RATE, subtype="FLOAT")
        written.append(path)
    return written
