"""Offline separation of one mixture with a Separator: the path evaluation, `separate` and the
real-time measurement share (it needs neither museval nor MLflow)."""

from __future__ import annotations

import numpy as np
import torch
from openunmix.model import Separator


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
