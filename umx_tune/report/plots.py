"""Matplotlib figures umx-tune logs as artifacts (headless: the Agg backend)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import scipy.signal
from PIL import Image

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

LOSS_LABEL = "loss (MSE of magnitude spectrogram)"
# Beyond this many configs a legend hides the plot; the report's tables name them instead.
MAX_LEGEND = 12
Curve = Sequence[tuple[float, float]]


def loss_curve_png(train: list[float], valid: list[float], path: Path, title: str = "") -> Path:
    """Train and validation loss per epoch, written as a PNG to path."""
    epochs = range(1, len(train) + 1)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(epochs, train, marker="o", label="train")
    ax.plot(epochs, valid, marker="o", label="valid")
    ax.set_xlabel("epoch")
    ax.set_ylabel(LOSS_LABEL)
    ax.set_title(title or "loss curve")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _colors(n: int) -> list[Any]:
    """n distinguishable colours; tab10 first, tab20 beyond ten configs."""
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _time_unit(max_seconds: float) -> tuple[float, str]:
    """A divisor and unit that keep the time axis readable, from a tiny test study to hours."""
    if max_seconds >= 2 * 3600:
        return 3600.0, "h"
    if max_seconds >= 120:
        return 60.0, "min"
    return 1.0, "s"


def _label_points(ax: Axes, names: Sequence[str], xs: Sequence[float], ys: Sequence[float]) -> None:
    for name, x, y in zip(names, xs, ys, strict=True):
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)


def study_loss_curves_png(curves: Mapping[str, tuple[Curve, Curve]], path: Path, title: str = "") -> Path:
    """Train (dashed) and validation (solid) loss per epoch of every config, one colour each.

    curves: {config name: ([(epoch, train loss)], [(epoch, valid loss)])}.
    """
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    for (name, (train, valid)), color in zip(curves.items(), _colors(len(curves)), strict=True):
        # distinct markers too, so that one-epoch runs (a single point each) still read
        for points, style, marker in ((train, "--", "x"), (valid, "-", "o")):
            if points:
                epochs, values = zip(*points, strict=True)
                ax.plot(epochs, values, linestyle=style, marker=marker, markersize=5, color=color)
        ax.plot([], [], color=color, label=name)  # one legend entry per config
    ax.plot([], [], "k--x", label="train")
    ax.plot([], [], "k-o", label="valid")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
    ax.set_xlabel("epoch")
    ax.set_ylabel(LOSS_LABEL)
    ax.set_title(title or "loss curves per config")
    ax.grid(alpha=0.3)
    if len(curves) <= MAX_LEGEND:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


Bounds = Mapping[str, Mapping[str, tuple[float, float]]]  # config -> metric -> (low, high)


def _error_bars(values: Sequence[float], bounds: Sequence[tuple[float, float] | None]) -> list[list[float]]:
    """matplotlib's asymmetric (2, n) errors from intervals; 0 where a value has none."""
    below = [v - b[0] if b is not None else 0.0 for v, b in zip(values, bounds, strict=True)]
    above = [b[1] - v if b is not None else 0.0 for v, b in zip(values, bounds, strict=True)]
    return [below, above]


def study_scores_png(
    scores: Mapping[str, Mapping[str, float]],
    metrics: Sequence[str],
    path: Path,
    title: str = "",
    intervals: Bounds | None = None,
) -> Path:
    """Grouped bars: one group per config, one bar per metric (dB), with error bars where intervals
    gives (low, high) bounds; a missing score has no bar."""
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(scores) + 2), 5), dpi=100)
    width = 0.8 / len(metrics)
    positions = range(len(scores))
    for i, metric in enumerate(metrics):
        values = [s.get(metric, float("nan")) for s in scores.values()]
        bounds = [(intervals or {}).get(name, {}).get(metric) for name in scores]
        xs = [p + (i - (len(metrics) - 1) / 2) * width for p in positions]
        yerr = _error_bars(values, bounds) if any(b is not None for b in bounds) else None
        ax.bar(xs, values, width, label=metric, yerr=yerr, capsize=3 if yerr else 0)
    for position, score in zip(positions, scores.values(), strict=True):
        if not score:  # say so rather than leave a gap that reads as 0 dB
            ax.text(position, 0.1, "no scores", rotation=90, ha="center", va="bottom", color="grey")
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xlim(-0.6, len(scores) - 0.4)  # room for the last group even when it has no bars
    ax.set_xticks(list(positions), list(scores), rotation=30 if len(scores) > 4 else 0, ha="right")
    ax.set_xlabel("config")
    ax.set_ylabel("score (dB, higher is better)")
    ax.set_title(title or "BSSEval v4 scores per config")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def loss_vs_time_png(
    points: Mapping[str, tuple[float, float]], path: Path, title: str = "", intervals: Bounds | None = None
) -> Path:
    """Final validation loss against training time; points: {config: (seconds, loss)}; intervals:
    {config: {"seconds" or "loss": (low, high)}} draws error bars."""
    names = list(points)
    divisor, unit = _time_unit(max(seconds for seconds, _ in points.values()))
    xs = [points[n][0] / divisor for n in names]
    ys = [points[n][1] for n in names]
    fig, ax = plt.subplots(figsize=(7, 5), dpi=100)
    ax.scatter(xs, ys, c=_colors(len(names)), s=40, zorder=3)
    if intervals:
        x_bounds = [_scaled(intervals.get(n, {}).get("seconds"), divisor) for n in names]
        y_bounds = [intervals.get(n, {}).get("loss") for n in names]
        ax.errorbar(
            xs, ys, xerr=_error_bars(xs, x_bounds), yerr=_error_bars(ys, y_bounds), fmt="none", ecolor="grey"
        )
    _label_points(ax, names, xs, ys)
    ax.set_xlabel(f"training time ({unit})")
    ax.set_ylabel(f"final validation {LOSS_LABEL}")
    ax.set_title(title or "final loss against training time")
    ax.grid(alpha=0.3)
    ax.margins(0.15)
    ax.set_xlim(left=0.0)
    return _save(fig, path)


def _scaled(bounds: tuple[float, float] | None, divisor: float) -> tuple[float, float] | None:
    return None if bounds is None else (bounds[0] / divisor, bounds[1] / divisor)


def sdr_vs_rtf_png(points: Mapping[str, tuple[float, float, bool]], path: Path, title: str = "") -> Path:
    """SDR against real-time factor; points: {config: (rtf, SDR dB, unidirectional)}.

    Unidirectional (causal) and bidirectional LSTMs get different markers; the line at rtf = 1
    separates faster than real time (left) from slower (right).
    """
    fig, ax = plt.subplots(figsize=(7, 5), dpi=100)
    for unidirectional, marker, label in ((False, "o", "bidirectional"), (True, "^", "unidirectional")):
        names = [n for n, (_, _, uni) in points.items() if uni == unidirectional]
        xs = [points[n][0] for n in names]
        ys = [points[n][1] for n in names]
        if names:
            ax.scatter(xs, ys, marker=marker, s=50, label=label, zorder=3)
            _label_points(ax, names, xs, ys)
    ax.axvline(1.0, color="grey", linestyle=":", label="real time (rtf = 1)")
    ax.set_xlim(left=0.0, right=max(1.1, 1.15 * max(rtf for rtf, _, _ in points.values())))
    ax.set_xlabel("real-time factor (processing time / audio duration; < 1 is faster than real time)")
    ax.set_ylabel("SDR (dB)")
    ax.set_title(title or "separation quality against speed")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.margins(y=0.15)
    return _save(fig, path)


SPECTROGRAM_NFFT = 2048
SPECTROGRAM_HOP = 512
SPECTROGRAM_RANGE_DB = 80.0  # the colour scale spans this far below the louder signal's peak
LOWEST_HZ = 30.0  # a log-frequency axis cannot start at 0 Hz


def _spectrogram_db(audio: np.ndarray, rate: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frequencies (nb_bins,), times (nb_frames,), magnitude in dB (nb_bins, nb_frames)) of
    audio (nb_samples, nb_channels), its channels averaged first."""
    mono = audio.mean(axis=1)
    freqs, times, stft = scipy.signal.stft(
        mono, fs=rate, nperseg=SPECTROGRAM_NFFT, noverlap=SPECTROGRAM_NFFT - SPECTROGRAM_HOP
    )
    keep = freqs >= LOWEST_HZ
    return freqs[keep], times, 20 * np.log10(np.abs(stft[keep]) + 1e-10)


def spectrograms_figure(reference: np.ndarray, estimate: np.ndarray, rate: int, title: str = "") -> Figure:
    """The reference's and the estimate's magnitude spectrograms (each (nb_samples, nb_channels),
    channels averaged), one above the other on a log-frequency axis and one colour scale (dB, the
    louder one's peak down SPECTROGRAM_RANGE_DB), so that what the estimate lacks or adds shows."""
    spectra = {"reference": _spectrogram_db(reference, rate), "estimate": _spectrogram_db(estimate, rate)}
    top = max(float(db.max()) for _, _, db in spectra.values())
    fig, axes = plt.subplots(2, 1, figsize=(9, 6.5), dpi=100, sharex=True, sharey=True, layout="constrained")
    for ax, (label, (freqs, times, db)) in zip(axes, spectra.items(), strict=True):
        mesh = ax.pcolormesh(
            times, freqs, db, shading="nearest", cmap="magma", vmin=top - SPECTROGRAM_RANGE_DB, vmax=top
        )
        ax.set_yscale("log")
        ax.set_ylabel("frequency (Hz)")
        ax.set_title(label, fontsize=10, loc="left")
    axes[-1].set_xlabel("time (s)")
    fig.suptitle(title or "reference and estimate")
    fig.colorbar(mesh, ax=list(axes), label="magnitude (dB)")
    return fig


def spectrograms_png(
    reference: np.ndarray, estimate: np.ndarray, rate: int, path: Path, title: str = ""
) -> Path:
    """`spectrograms_figure`, written as a PNG of 256 colours to path (a third of the size of a
    full-colour one: noisy spectra compress badly; the colour map has 256 colours anyway)."""
    fig = spectrograms_figure(reference, estimate, rate, title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    with Image.open(buffer) as image:
        image.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(path, "PNG", optimize=True)
    return path
