"""Global SDR (MDX 2021 / SDX 2023) against hand-computed values, and as scoring reports it.

That a `umx-tune train` run logs it (plain and per estimate) is checked with the run's other
metrics in test_cli_train.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from umx_tune import tracking
from umx_tune.evaluation.global_sdr import EPSILON, global_sdr, mean_over_tracks


def test_global_sdr_sums_over_channels_and_samples() -> None:
    reference = np.array([[1.0, -2.0], [3.0, 0.0], [0.0, 1.0]])  # Σs² = 1 + 4 + 9 + 1 = 15
    estimate = reference + np.array([[0.5, 0.0], [0.0, -0.5], [1.0, 0.0]])  # Σ(s-ŝ)² = 1.5
    assert global_sdr(reference, estimate) == pytest.approx(10 * math.log10((15 + 1e-7) / (1.5 + 1e-7)))
    assert global_sdr(reference, estimate) == pytest.approx(10.0, abs=1e-6)


def test_epsilon_keeps_perfect_and_silent_finite() -> None:
    reference = np.ones((4, 2))  # Σs² = 8
    assert EPSILON == 1e-7  # the MDX 2021 evaluator's delta
    assert global_sdr(reference, reference) == pytest.approx(10 * math.log10(8e7))
    assert global_sdr(np.zeros((4, 2)), np.zeros((4, 2))) == pytest.approx(0.0)
    assert global_sdr(reference, 0.5 * reference) == pytest.approx(10 * math.log10(4.0), abs=1e-6)


def test_the_aggregate_is_the_mean_over_tracks() -> None:
    assert mean_over_tracks([1.0, 2.0, 6.0]) == pytest.approx(3.0)


def test_score_track_gives_each_estimate_its_global_sdr(synth_root: Path) -> None:
    """Halved references score 10·log10(4) ≈ 6.02 dB, whatever BSSEval says of them."""
    from umx_tune.data.dataset import wav_track
    from umx_tune.evaluation.scoring import score_track

    track = wav_track(next((synth_root / "test").iterdir()), "t")
    estimates = {"vocals": 0.5 * track.read("vocals").T, "residual": 0.5 * track.residual("vocals").T}
    result = score_track(track, ("vocals", "accompaniment"), estimates, "fast")
    assert result.global_sdr == pytest.approx({"vocals": 6.0206, "accompaniment": 6.0206}, abs=1e-3)
    assert tracking.metric_name("vocals", tracking.GLOBAL_SDR) == "vocals_global_SDR"
