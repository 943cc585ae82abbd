"""Global SDR, the score of the Music Demixing Challenge 2021 and the Sound Demixing Challenge 2023.

Per track and source, one number over the whole signal, 10·log10(Σs² / Σ(s−ŝ)²) summed over every
channel and sample, no BSSEval projections, no frames; a model's score is the mean over tracks
(where SiSEC 2018 takes medians of BSSEval v4 frames). As in the challenges' own code
(`sdr()` of the MDX 2021 evaluator), EPSILON is added to both sums, so a silent reference or a
perfect estimate stays finite.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

EPSILON = 1e-7  # MDX 2021's delta, added to numerator and denominator


def global_sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Global SDR in dB of one source's estimate; reference and estimate (nb_samples, nb_channels)."""
    reference = np.asarray(reference, dtype=np.float64)
    error = reference - np.asarray(estimate, dtype=np.float64)
    return float(10 * np.log10((np.sum(reference**2) + EPSILON) / (np.sum(error**2) + EPSILON)))


def mean_over_tracks(scores: Iterable[float]) -> float:
    """The challenges' aggregate of per-track global SDRs: their mean."""
    return float(np.mean(list(scores)))
