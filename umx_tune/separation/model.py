"""Builds openunmix's OpenUnmix network, its STFT encoder and Separator from a TrainConfig."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from openunmix import model as umx_model
from openunmix import transforms, utils

from umx_tune.config import SAMPLE_RATE, TrainConfig
from umx_tune.errors import ConfigError


def nb_bins(config: TrainConfig) -> int:
    """Number of STFT bins, nfft // 2 + 1."""
    return config.nfft // 2 + 1


def max_bin(config: TrainConfig) -> int:
    """Highest bin the network sees, from the bandwidth (bins above pass through the mask)."""
    return int(utils.bandwidth_to_max_bin(SAMPLE_RATE, config.nfft, config.bandwidth))


def build_unmix(
    config: TrainConfig,
    input_mean: np.ndarray | None = None,
    input_scale: np.ndarray | None = None,
) -> umx_model.OpenUnmix:
    """OpenUnmix for one target; mean/scale are the training set's per-bin statistics (nb_bins,)."""
    return umx_model.OpenUnmix(
        nb_bins=nb_bins(config),
        nb_channels=config.nb_channels,
        hidden_size=config.hidden_size,
        unidirectional=config.unidirectional,
        input_mean=input_mean,
        input_scale=input_scale,
        max_bin=max_bin(config),
    )


def build_encoder(config: TrainConfig) -> torch.nn.Sequential:
    """Waveform (batch, channels, samples) -> magnitude (batch, channels, bins, frames), as in training."""
    stft, _ = transforms.make_filterbanks(n_fft=config.nfft, n_hop=config.nhop, sample_rate=SAMPLE_RATE)
    return torch.nn.Sequential(stft, transforms.ComplexNorm(mono=config.nb_channels == 1))


def build_separator(
    config: TrainConfig, unmix: umx_model.OpenUnmix, *, niter: int = 1
) -> umx_model.Separator:
    """Separator yielding the target and the residual (mixture minus target), Wiener-filtered, on
    the network's device (its STFT window with it)."""
    separator = umx_model.Separator(
        target_models={config.target: unmix},
        niter=niter,
        residual=True,
        sample_rate=SAMPLE_RATE,
        n_fft=config.nfft,
        n_hop=config.nhop,
        nb_channels=config.nb_channels,
    )
    separator.freeze()
    return separator.to(next(unmix.parameters()).device)


def assemble(
    models: Mapping[str, umx_model.OpenUnmix],
    like: umx_model.Separator,
    *,
    residual: bool,
    niter: int,
    wiener_win_len: int | None,
) -> umx_model.Separator:
    """A Separator of models (target -> network, in that order; shared, not copied) with like's
    STFT, sample rate, channels and softmask: several targets' networks as one separator, or a
    subset of one's with other Wiener settings (wiener_win_len None or 0: the whole signal)."""
    separator = umx_model.Separator(
        target_models=dict(models),
        niter=niter,
        softmask=like.softmask,
        residual=residual,
        sample_rate=float(like.sample_rate),
        n_fft=int(like.stft.n_fft),
        n_hop=int(like.stft.n_hop),
        nb_channels=1 if like.complexnorm.mono else 2,
        wiener_win_len=wiener_win_len,
    )
    separator.freeze()
    return separator.to(like.stft.window.device)


def stft_settings(separator: umx_model.Separator) -> dict[str, float]:
    """What separators must share to be assembled into one: sample rate, nfft, nhop, channels."""
    return {
        "sample_rate": float(separator.sample_rate),
        "nfft": int(separator.stft.n_fft),
        "nhop": int(separator.stft.n_hop),
        "nb_channels": 1 if separator.complexnorm.mono else 2,
    }


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when available; asking for an absent CUDA is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' is not available on this machine; use device=cpu or auto")
    return torch.device(name)
