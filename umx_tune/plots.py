"""Matplotlib figures umx-tune logs as artifacts (headless: the Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)


def loss_curve_png(train: list[float], valid: list[float], path: Path, title: str = "") -> Path:
    """Train and validation loss per epoch, written as a PNG to path."""
    epochs = range(1, len(train) + 1)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(epochs, train, marker="o", label="train")
    ax.plot(epochs, valid, marker="o", label="valid")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (MSE of magnitude spectrogram)")
    ax.set_title(title or "loss curve")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
