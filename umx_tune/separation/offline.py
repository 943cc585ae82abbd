"""Offline separation of one mixture with a Separator (the path evaluation, `separate` and the
real-time measurement share; no museval, no MLflow), and writing the estimates as audio files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from openunmix.model import Separator

from umx_tune.config import SAMPLE_RATE
from umx_tune.data.audio import write_audio
from umx_tune.errors import DatasetError, ModelError
from umx_tune.separation.model import assemble

RESIDUAL = "residual"  # the Separator's own name of its residual estimate, as `separate` returns it


def residual_name(target: str) -> str:
    """Name of the residual estimate: musdb's 'accompaniment' for vocals, else 'residual'."""
    return "accompaniment" if target == "vocals" else RESIDUAL


def estimate_names(separator: Separator) -> list[str]:
    """The estimates in the Separator's output order: its targets, then 'residual' if it has one."""
    return [*separator.target_models.keys(), *([RESIDUAL] if separator.residual else [])]


def separate(separator: Separator, audio: np.ndarray, device: torch.device) -> dict[str, np.ndarray]:
    """Separate a mixture (nb_channels, nb_samples) into {name: (nb_samples, nb_channels)} float32.

    DatasetError for a mixture too short for the model's STFT; ModelError if an estimate is not
    finite (never handed on to be written or scored)."""
    check_length(separator, audio.shape[-1])
    # A mono model's estimate is the same in both channels, so on a (near-)mono mixture the Wiener
    # EM's 2x2 channel covariances are (near) rank-one: their float32 inverse cancels to 0 (NaN
    # audio) or to errors of 5-25% of the signal. float64, the precision Open-Unmix's filtering asks
    # for, holds (about twice the time; stereo models differ by < 1e-4 and stay in float32).
    dtype = torch.float64 if separator.complexnorm.mono else torch.float32
    try:
        with torch.no_grad():
            mix = torch.as_tensor(audio, dtype=dtype, device=device)[None]
            # (1, nb_targets [+ residual], nb_channels, nb_samples)
            estimates = separator.to(dtype)(mix).float()
    finally:
        separator.float()
    names = estimate_names(separator)
    return require_finite({name: estimates[0, k].T.cpu().numpy() for k, name in enumerate(names)})


def check_length(separator: Separator, nb_samples: int) -> None:
    """DatasetError for audio the model's STFT cannot take: its centred frames pad nfft // 2
    samples by reflection, which needs more samples than that."""
    n_fft = int(separator.stft.n_fft)
    if nb_samples <= n_fft // 2:
        raise DatasetError(
            f"the audio is {nb_samples} samples long; this model (nfft {n_fft}) needs more than {n_fft // 2}"
        )


def require_finite(estimates: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """estimates, or ModelError naming the first one holding NaN or infinite samples."""
    for name, audio in estimates.items():
        bad = int(np.count_nonzero(~np.isfinite(audio)))
        if bad:
            raise ModelError(
                f"separation gave {bad} NaN or infinite samples of {audio.size} in the {name} estimate; "
                "nothing is written or scored"
            )
    return estimates


def at_rate(estimates: dict[str, np.ndarray], rate: int, length: int) -> dict[str, np.ndarray]:
    """Estimates {name: (nb_samples, nb_channels)} at 44.1 kHz resampled to rate, length samples each
    (the length of the mixture before `resample` took it to the model's rate)."""
    if rate == SAMPLE_RATE:
        return estimates
    # there and back may gain or lose a sample: cut or pad to the mixture's length
    back = {name: resample(e.T, SAMPLE_RATE, rate)[:, :length] for name, e in estimates.items()}
    return {name: np.pad(e, ((0, 0), (0, length - e.shape[-1]))).T for name, e in back.items()}


def resample(audio: np.ndarray, rate: int, new_rate: int) -> np.ndarray:
    """(nb_channels, nb_samples) at rate -> (nb_channels, nb_samples') at new_rate, float32, with
    torchaudio's windowed-sinc resampler (the one Open-Unmix's `preprocess` uses)."""
    if rate == new_rate:
        return audio
    import torchaudio.functional  # only here: most inputs are at 44.1 kHz, and its import is slow

    resampled = torchaudio.functional.resample(torch.from_numpy(np.ascontiguousarray(audio)), rate, new_rate)
    return resampled.numpy().astype(np.float32, copy=False)


def configure(
    separator: Separator,
    targets: Sequence[str] | None = None,
    *,
    residual: bool,
    niter: int | None = None,
    wiener_win_len: int | None = None,
) -> Separator:
    """A Separator of separator's networks for targets (None: all), with or without the residual and
    with its own Wiener settings (None: separator's), as Open-Unmix's `load_separator` builds one
    from (targets, residual, niter, wiener_win_len); the networks are shared, not copied.

    ModelError for a target the model lacks, and for EM iterations on a single estimate (Open-Unmix
    refuses those when separating)."""
    have = list(separator.target_models)
    chosen = list(dict.fromkeys(targets)) if targets else have
    missing = [t for t in chosen if t not in have]
    if missing:
        raise ModelError(f"the model has no {', '.join(missing)} target; it separates {', '.join(have)}")
    niter = separator.niter if niter is None else niter
    if len(chosen) == 1 and not residual and niter > 0:
        raise ModelError(
            f"Wiener EM (niter={niter}) needs two estimates: separate the residual too, or set niter 0"
        )
    models = {name: separator.target_models[name] for name in chosen}
    win_len = separator.wiener_win_len if wiener_win_len is None else wiener_win_len
    return assemble(models, separator, residual=residual, niter=niter, wiener_win_len=win_len)


def write_estimates(
    estimates: dict[str, np.ndarray], labels: dict[str, str], stem: str, out: Path, rate: int, ext: str
) -> list[Path]:
    """Write `<stem>_<label>.<ext>` for each estimate labels names ({estimate: label}; estimates as
    `separate` returns them) into out, at rate; return their paths."""
    require_finite(estimates)  # streamed estimates come here without `separate`'s check
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, label in labels.items():
        path = out / f"{stem}_{label}.{ext}"
        write_audio(path, estimates[name], rate)
        written.append(path)
    return written
