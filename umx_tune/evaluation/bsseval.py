"""Exact BSSEval v4 image metrics, museval's numbers at a fraction of museval's cost.

`evaluate` has the contract of ``museval.evaluate(references, estimates, win, hop, mode="v4")``
(museval 0.4.1): 512-tap time-invariant distortion filters fitted once over the whole track,
then SDR/ISR/SIR/SAR of every whole window, NaN for a window where any source is silent. The
mathematics is museval's; the arithmetic is arranged differently:

* Only lags 0..511 of each cross-correlation are needed, so instead of one full-length complex FFT
  per pair of channels (museval), every channel is cut into blocks, each block is transformed once
  with a short real FFT, and the cross-spectra of all channel pairs are summed over the blocks as
  one batched matrix product per frequency. One short inverse FFT per pair gives the lags.
* The normal equations of all targets share one Gram matrix G (4096 x 4096 for 4 stereo targets),
  which museval LU-factorises once per target. Here one solve serves every target, and G, block
  Toeplitz once ordered by delay, is solved by the block Levinson recursion in O(L^2 nx^3) instead
  of O(L^3 nx^3). Its answer is kept only with the backward error of a stable factorisation;
  otherwise Cholesky, and where G is not numerically positive definite museval's own LU / least
  squares. The small per-target systems use Cholesky.
* The framewise projections (filters applied to a window's references) are products of spectra,
  batched over windows and channels, and their energies follow by Parseval: no inverse FFTs.

The numbers agree with museval's to rounding (1e-10 dB on audio-like signals). Both rest on the
Gram matrix of the delayed references: where it is numerically singular without being exactly so
(channels of a source that differ only far below the noise floor, in some band; tracks shorter
than nsrc * nchan * 512 samples) museval's scores are themselves rounding noise (rescaling the
input by 1.001 moves them by dBs) and are not reproduced. Exact dependence (a silent channel,
identical channels) takes museval's own LU / least-squares path and matches.

`eval_track` is ``museval.eval_mus_track`` for plain dicts of arrays, filling museval's
`TrackStore` so the per-track JSON and the SiSEC aggregation stay museval's.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import museval
import numpy as np
import scipy.fft
import scipy.linalg
from numpy.lib.stride_tricks import sliding_window_view

from umx_tune.config import EVALUATORS
from umx_tune.errors import EvaluationError

FILTER_LEN = 512  # taps of the distortion filters, museval's `filters_len`
MAX_SOURCES = 100  # museval.metrics.MAX_SOURCES: more sources are refused, as museval does
_EPS = float(np.finfo(np.float64).eps)  # museval adds eps * I to every Gram matrix it solves
_BLOCK_NFFT = 16384  # FFT size of the blockwise correlations: blocks of 16384 - 511 samples
_LEVINSON_MIN_SIZE = 2048  # systems from this size on try the block Levinson recursion first
_REFINED_TOL = 1e-16  # Levinson solutions are refined down to this normwise backward error ...
_REFINEMENTS = 2  # ... in at most this many steps,
_BACKWARD_TOL = 1e-15  # and dropped for Cholesky if still above this
_CHUNK_BYTES = 96 * 2**20  # temporaries of one batch of blocks or windows: bounds the extra memory

Scores = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _permute(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """x with its axes reordered, as a contiguous copy: matmul only reaches BLAS on contiguous stacks."""
    return np.ascontiguousarray(np.transpose(x, axes))


def _cholesky_solve(g: np.ndarray, d: np.ndarray) -> np.ndarray | None:
    """Solve g x = d for symmetric g, in place of g; None where g is not numerically positive."""
    diag = np.diag(g).copy()
    try:
        factor = scipy.linalg.cho_factor(g, lower=True, overwrite_a=True, check_finite=False)
    except np.linalg.LinAlgError:
        return None
    if not _well_pivoted(np.diag(factor[0]) ** 2, diag):
        return None
    return scipy.linalg.cho_solve(factor, d, overwrite_b=False, check_finite=False)


def _well_pivoted(pivots: np.ndarray, diag: np.ndarray) -> bool:
    """Whether a Cholesky factorisation met no numerically dependent column.

    pivots[k] / diag[k] is the squared sine of the angle between delayed channel k and the span of
    the ones before it. Near machine epsilon the pivot is rounding noise, and museval's LU (which
    the caller then falls back to) is the reference behaviour, including its least-squares branch.
    """
    return bool(np.all(pivots > 64 * _EPS * diag))


# --- input checks -------------------------------------------------------------------------------


def _as_sources(x: Any, name: str) -> np.ndarray:
    """`x` as float64 (nsrc, nsamples, nchan), refusing what BSSEval cannot score."""
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise EvaluationError(f"{name} is not a numeric array of equal-length sources: {err}") from None
    if arr.ndim != 3:
        raise EvaluationError(f"{name} must be shaped (nsrc, nsamples, nchan), got shape {arr.shape}")
    if 0 in arr.shape:
        raise EvaluationError(f"{name} is empty (shape {arr.shape}): nothing to evaluate")
    if not np.all(np.isfinite(arr)):
        raise EvaluationError(f"{name} holds NaN or infinite samples")
    return arr


def _check_pair(references: np.ndarray, estimates: np.ndarray) -> None:
    """Refuse references and estimates that do not describe the same sources and channels."""
    if references.shape[0] != estimates.shape[0]:
        raise EvaluationError(
            f"{references.shape[0]} reference sources but {estimates.shape[0]} estimates; "
            "BSSEval pairs estimate j with reference j"
        )
    if references.shape[0] > MAX_SOURCES:
        raise EvaluationError(f"{references.shape[0]} sources, more than museval's limit of {MAX_SOURCES}")
    if references.shape[2] != estimates.shape[2]:
        raise EvaluationError(
            f"references have {references.shape[2]} channels but estimates have {estimates.shape[2]}"
        )


def _check_window(win: Any, hop: Any) -> None:
    for name, value in (("win", win), ("hop", hop)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value <= 0:
            raise EvaluationError(f"{name} must be a positive whole number of samples, got {value!r}")


def _fit_length(estimates: np.ndarray, nsamples: int) -> np.ndarray:
    """Cut estimates (nsrc, n, nchan) to `nsamples`, or pad them with zeros at the end (museval)."""
    if estimates.shape[1] >= nsamples:
        return estimates[:, :nsamples]
    pad = np.zeros((estimates.shape[0], nsamples - estimates.shape[1], estimates.shape[2]))
    return np.concatenate([estimates, pad], axis=1)


def _active(sources: np.ndarray) -> np.ndarray:
    """(nsrc, nsamples) bool: where a source counts as sounding for museval.

    museval calls a source silent where the sum over its channels is zero, not its energy, so a
    stereo source with one channel the negative of the other counts as silent too. Kept as is.
    """
    return sources.sum(axis=2) != 0


def _check_not_silent(active: np.ndarray, name: str) -> None:
    silent = np.flatnonzero(~active.any(axis=1))
    if silent.size:
        raise EvaluationError(
            f"{name} source {int(silent[0])} is silent over its whole length (its channels sum to "
            "zero at every sample); BSSEval is undefined for it, museval refuses it too"
        )


# --- windows ------------------------------------------------------------------------------------


def _window_starts(nsamples: int, win: int, hop: int) -> tuple[np.ndarray, int]:
    """First samples of museval's windows, and their common length.

    Only whole windows count; a window longer than the signal gives one window over all of it.
    """
    if win >= nsamples:
        return np.zeros(1, dtype=np.int64), nsamples
    nwin = (nsamples - win + hop) // hop
    return np.arange(nwin, dtype=np.int64) * hop, win


def _silent_windows(active: list[np.ndarray], starts: np.ndarray, length: int) -> np.ndarray:
    """(nwin,) bool: windows in which some reference or estimate is silent (they score NaN)."""
    silent = np.zeros(starts.size, dtype=bool)
    for k, start in enumerate(starts):
        silent[k] = any(not a[:, start : start + length].any(axis=1).all() for a in active)
    return silent


# --- distortion filters -------------------------------------------------------------------------


def _block_spectra(
    sources: np.ndarray, first: int, nblocks: int, block: int, extra: int, nfft: int
) -> np.ndarray:
    """Real FFTs of consecutive blocks of every channel, each block extended by `extra` samples.

    sources: (nsrc, nsamples, nchan). Block b covers samples [(first + b) * block, ... + block + extra),
    zeros past the end. Returns (nsrc * nchan, nblocks, nfft // 2 + 1), channels source-major.
    """
    nsig = sources.shape[0] * sources.shape[2]
    start = first * block
    span = sources[:, start : start + (nblocks + 1) * block]
    flat = _permute(span, (0, 2, 1)).reshape(nsig, -1)  # (nsig, span), each channel contiguous
    padded = np.zeros((nsig, (nblocks + 1) * block))
    padded[:, : flat.shape[1]] = flat
    blocks = padded.reshape(nsig, nblocks + 1, block)
    frames = np.zeros((nsig, nblocks, nfft))  # zero-padded to the FFT size here, not in rfft
    frames[..., :block] = blocks[:, :nblocks]
    if extra:  # the first `extra` samples of the next block extend each block
        frames[..., block : block + extra] = blocks[:, 1:, :extra]
    return scipy.fft.rfft(frames, n=nfft, axis=-1)


def _correlations(references: np.ndarray, estimates: np.ndarray, filter_len: int) -> np.ndarray:
    """Lags 0..filter_len-1 of the cross-correlation of each reference channel with every channel.

    references, estimates: (nsrc, nsamples, nchan). Returns corr (nx, 2 * nx, filter_len) with
    corr[x, y, m] = sum_n r_x[n] s_y[n + m], x over the nx = nsrc * nchan reference channels and y
    over the reference channels then the estimate channels. Block b of r_x (B samples) only meets
    samples [bB, bB + B + filter_len - 1) of s_y at these lags, so with FFTs of B + filter_len - 1
    points no lag wraps around, and the block cross-spectra can be summed before one inverse FFT.
    """
    nsamples = references.shape[1]
    nx = references.shape[0] * references.shape[2]
    nfft = min(_BLOCK_NFFT, scipy.fft.next_fast_len(max(nsamples, filter_len) + filter_len - 1, real=True))
    block = nfft - filter_len + 1
    nblocks = -(-nsamples // block)
    # spectra of x (nx channels) and y (2 nx), each also permuted: 6 nx nfft float64 per block
    per_chunk = max(1, _CHUNK_BYTES // (6 * nx * nfft * 8))
    cross = np.zeros((nfft // 2 + 1, nx, 2 * nx), dtype=np.complex128)
    for first in range(0, nblocks, per_chunk):
        count = min(per_chunk, nblocks - first)
        x = _block_spectra(references, first, count, block, 0, nfft)
        y = np.concatenate(
            [_block_spectra(s, first, count, block, filter_len - 1, nfft) for s in (references, estimates)],
            axis=0,
        )
        # per frequency: (nx, blocks) @ (blocks, 2nx), the sum over blocks as one batched product
        cross += _permute(x, (2, 0, 1)).conj() @ _permute(y, (2, 1, 0))
    return scipy.fft.irfft(_permute(cross, (1, 2, 0)), n=nfft, axis=-1)[..., :filter_len]


def _gram(corr: np.ndarray, filter_len: int, eps: float) -> np.ndarray:
    """Gram matrix of the delayed reference channels, plus eps * I as museval adds it.

    corr: (nx, >= nx, filter_len) from `_correlations`. Returns G (nx * L, nx * L), rows and
    columns (channel x, delay a) with G[(x, a), (y, b)] = sum_n r_x[n - a] r_y[n - b] = R_xy[a - b],
    where R_xy[-k] = R_yx[k] gives the negative lags.
    """
    nx, length = corr.shape[0], filter_len
    rr = corr[:, :nx]
    lagged = np.concatenate([_permute(rr, (1, 0, 2))[..., :0:-1], rr], axis=2)  # lags -L+1..L-1
    blocks = np.zeros((nx, length, nx, length))  # (x, a, y, b)
    for x in range(nx):  # one row of blocks at a time, so no second full-size copy is made
        # windows[y, a, k] = lagged[x, y, a + k] is Hankel; flipping k gives R_xy[a - b], Toeplitz
        toeplitz = sliding_window_view(lagged[x], length, axis=-1)[..., ::-1]  # (y, a, b)
        blocks[x] = np.transpose(toeplitz, (1, 0, 2))
    g = blocks.reshape(nx * length, nx * length)
    g[np.diag_indices_from(g)] += eps
    return g


def _solve(corr: np.ndarray, rhs: np.ndarray, filter_len: int) -> np.ndarray:
    """Solve (G + eps I) c = rhs, G the Gram matrix of the channels in corr (nx, >= nx, L).

    rhs, c: (nx * L, k). Large systems first try the block Levinson recursion, kept only if its
    backward error is that of a stable factorisation. Then Cholesky where G is numerically positive
    definite; otherwise museval's own path: LU solve, then least squares on G without eps where G is
    exactly singular.
    """
    nx = corr.shape[0]
    if nx * filter_len >= _LEVINSON_MIN_SIZE:
        solution = _levinson_solve(corr[:, :nx], rhs, _EPS)
        if solution is not None:
            return solution
    solution = _cholesky_solve(_gram(corr, filter_len, _EPS), rhs)
    if solution is not None:
        return solution
    g = _gram(corr, filter_len, _EPS)
    try:
        return np.linalg.solve(g, rhs)
    except np.linalg.LinAlgError:
        g[np.diag_indices_from(g)] -= _EPS
        return np.linalg.lstsq(g, rhs)[0]


def _filters(references: np.ndarray, estimates: np.ndarray, filter_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Distortion filters of every estimate channel, fitted over the whole track (BSSEval v4).

    Returns (c_all, c_own): c_all (nx, L, ne) projects estimate channel e on all delayed reference
    channels x; c_own (nsrc, nchan, L, nchan) projects estimate j's channels on reference j only.
    """
    nsrc, _, nchan = references.shape
    nx, size = nsrc * nchan, nchan * filter_len
    corr = _correlations(references, estimates, filter_len)
    rhs = _permute(corr[:, nx:], (0, 2, 1)).reshape(nx * filter_len, nx)  # D[(x, a), e] = R_xe[a]
    own = []
    for j in range(nsrc):  # museval solves G_jj c = D_j with the diagonal blocks of G
        chans = slice(j * nchan, (j + 1) * nchan)
        own.append(_solve(corr[chans, chans], rhs[j * size : (j + 1) * size, chans], filter_len))
    c_all = _solve(corr, rhs, filter_len)
    c_own = np.stack(own, axis=0).reshape(nsrc, nchan, filter_len, nchan)
    return c_all.reshape(nx, filter_len, nx), c_own


# --- block Toeplitz solver ----------------------------------------------------------------------


def _levinson_solve(corr: np.ndarray, rhs: np.ndarray, eps: float) -> np.ndarray | None:
    """Solve (G + eps I) c = rhs by the block Levinson recursion in O(L^2 nx^3), not O(L^3 nx^3).

    corr: (nx, nx, L) reference correlations; rhs, c: (nx * L, k), rows (channel, delay).
    Ordered (delay, channel), G is symmetric block Toeplitz with blocks M_{a-b}, (M_k)_xy = R_xy[k].
    The recursion is only weakly stable (normwise backward errors up to ~1e-15 where Cholesky
    reaches ~1e-17), so the answer is refined against the exact residual until its backward error
    is that of Cholesky, and dropped (None) if it does not get below _BACKWARD_TOL.
    """
    nx, _, length = corr.shape
    blocks = np.ascontiguousarray(corr.transpose(2, 0, 1))  # (L, nx, nx): M_0 .. M_{L-1}
    blocks[0] += eps * np.eye(nx)
    d = np.ascontiguousarray(rhs.reshape(nx, length, -1).transpose(1, 0, 2))  # (L, nx, k)
    with np.errstate(all="ignore"):  # a breakdown shows as inf / NaN, caught below
        try:
            x = _levinson(blocks, d)
            for _ in range(_REFINEMENTS):
                error, residual = _backward_error(blocks, d, x)
                if not error > _REFINED_TOL:  # also stops on NaN
                    break
                x = x + _levinson(blocks, residual)
        except np.linalg.LinAlgError:
            return None
        error, _ = _backward_error(blocks, d, x)
    if not error <= _BACKWARD_TOL:
        return None
    return np.ascontiguousarray(x.transpose(1, 0, 2)).reshape(nx * length, -1)


def _backward_error(blocks: np.ndarray, d: np.ndarray, x: np.ndarray) -> tuple[float, np.ndarray]:
    """Normwise backward error ||d - T x|| / (||T|| ||x|| + ||d||) (Frobenius), and d - T x."""
    length = blocks.shape[0]
    residual = d - _block_toeplitz_matvec(blocks, x)
    weights = np.concatenate([[length], 2 * (length - np.arange(1, length))])  # M_k occurs L-|k| times
    t_norm = np.sqrt(weights @ np.sum(blocks**2, axis=(1, 2)))
    error = np.linalg.norm(residual) / (t_norm * np.linalg.norm(x) + np.linalg.norm(d))
    return float(error), residual


def _levinson(blocks: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Block Levinson-Whittle-Trench recursion: solve T x = d, T[a, b] = M_{a-b}, M_{-k} = M_k^T.

    blocks: (L, p, p) M_0 .. M_{L-1}; d, x: (L, p, k). Step n extends the solution of the leading
    (n+1)-block system using forward and backward "predictors" f, b with T f = [E_f, 0, ..., 0]
    and T b = [0, ..., 0, E_b] (f_0 = b_n = I).
    """
    length, p, _ = blocks.shape
    nrhs = d.shape[-1]
    # row n+1 of T is [M_{n+1} .. M_1] left of the diagonal; row 0 is [M_0, M_{-1} .. M_{-n-1}]
    row = np.concatenate([*blocks[:0:-1], blocks[0], *blocks[1:].transpose(0, 2, 1)], axis=1)
    fwd, bwd = np.zeros((length, p, p)), np.zeros((length, p, p))
    fwd[0] = bwd[0] = np.eye(p)
    err_fwd, err_bwd = blocks[0].copy(), blocks[0].copy()
    x = np.zeros(d.shape)
    x[0] = np.linalg.solve(blocks[0], d[0])
    for n in range(length - 1):
        f, b = fwd[: n + 1].reshape(-1, p), bwd[: n + 1].reshape(-1, p)
        below = row[:, (length - 2 - n) * p : (length - 1) * p]  # [M_{n+1} .. M_1]
        mismatch_f = below @ f  # what [f; 0] leaves in the new last block row
        mismatch_b = row[:, length * p : (length + n + 1) * p] @ b  # what [0; b] leaves in row 0
        # E_b alpha = -mismatch_f and E_f beta = -mismatch_b, in one batched call
        alpha, beta = np.linalg.solve(np.stack([err_bwd, err_fwd]), -np.stack([mismatch_f, mismatch_b]))
        step_f, step_b = (b @ alpha).reshape(n + 1, p, p), (f @ beta).reshape(n + 1, p, p)
        bwd[1 : n + 2] = bwd[: n + 1].copy()  # b <- [0; b] + [f; 0] beta
        bwd[0] = 0.0
        bwd[: n + 1] += step_b
        fwd[1 : n + 2] += step_f  # f <- [f; 0] + [0; b] alpha
        err_fwd += mismatch_b @ alpha
        err_bwd += mismatch_f @ beta
        gamma = np.linalg.solve(err_bwd, d[n + 1] - below @ x[: n + 1].reshape(-1, nrhs))
        x[: n + 2] += (bwd[: n + 2].reshape(-1, p) @ gamma).reshape(n + 2, p, -1)
    return x


def _block_toeplitz_matvec(blocks: np.ndarray, x: np.ndarray) -> np.ndarray:
    """y_a = sum_b M_{a-b} x_b, a block convolution done with FFTs; blocks (L, p, p), x (L, p, k)."""
    length = blocks.shape[0]
    sequence = np.concatenate([blocks[:0:-1].transpose(0, 2, 1), blocks])  # M_{-(L-1)} .. M_{L-1}
    nfft = scipy.fft.next_fast_len(3 * length - 2, real=True)
    spectra = scipy.fft.rfft(sequence, nfft, axis=0) @ scipy.fft.rfft(x, nfft, axis=0)
    return scipy.fft.irfft(spectra, nfft, axis=0)[length - 1 : 2 * length - 1]


# --- framewise scores ---------------------------------------------------------------------------


def _filter_spectra(c_all: np.ndarray, c_own: np.ndarray, nfft: int) -> np.ndarray:
    """Spectra of all filters as one matrix per frequency, (nfft // 2 + 1, 2 * ne, nx).

    Output rows 0..ne-1 give the projection of estimate channel e on all references, rows
    ne..2ne-1 its projection on its own reference only (zero weight on the other sources).
    """
    nsrc, nchan, length, _ = c_own.shape
    nx = nsrc * nchan
    spectra = np.zeros((nfft // 2 + 1, 2 * nx, nx), dtype=np.complex128)
    spectra[:, :nx] = _permute(scipy.fft.rfft(_permute(c_all, (2, 0, 1)), n=nfft, axis=-1), (2, 0, 1))
    own = scipy.fft.rfft(_permute(c_own, (0, 3, 1, 2)), n=nfft, axis=-1)
    own = _permute(own, (3, 0, 1, 2))  # (F, j, c, c')
    for j in range(nsrc):  # only the diagonal blocks: the own projection ignores other sources
        rows, chans = slice(nx + j * nchan, nx + (j + 1) * nchan), slice(j * nchan, (j + 1) * nchan)
        spectra[:, rows, chans] = own[:, j]
    return spectra


def _window_spectra(sources: np.ndarray, starts: np.ndarray, length: int, weight: np.ndarray) -> np.ndarray:
    """Weighted spectra of the windows of every channel, (nfft // 2 + 1, nx, nwin).

    weight (nfft // 2 + 1,) makes sum(|X|^2) over frequencies the energy of the window (Parseval
    for real FFTs: bins other than 0 and nfft / 2 stand for two), so every energy below is a plain
    sum of squared magnitudes.
    """
    nfft = (weight.shape[0] - 1) * 2
    frames = np.stack([sources[:, int(s) : int(s) + length] for s in starts], axis=-1)
    nsrc, _, nchan, nwin = frames.shape  # (nsrc, length, nchan, nwin)
    flat = _permute(frames, (0, 2, 3, 1)).reshape(nsrc * nchan, nwin, length)
    return _permute(scipy.fft.rfft(flat, n=nfft, axis=-1) * weight, (2, 0, 1))


def _energies(
    spectra: np.ndarray, references: np.ndarray, estimates: np.ndarray, starts: np.ndarray, length: int
) -> np.ndarray:
    """The seven energies behind SDR/ISR/SIR/SAR for windows starting at `starts`, (7, nsrc, nwin).

    museval applies the filters to the window's references alone, so each projection is a full
    linear convolution, filter_len - 1 samples longer than the window; with FFTs of at least that
    length all signals are exact in the frequency domain and their energies follow by Parseval,
    without inverse FFTs. The decomposition follows museval's operation for operation, so that
    degenerate cases (a perfect estimate) leave rounding residues, not exact zeros, as in museval.
    """
    nsrc = references.shape[0]
    nx = spectra.shape[2]
    weight = _parseval_weight(spectra.shape[0])
    s_true = _window_spectra(references, starts, length, weight)  # (F, nx, nwin)
    proj = spectra @ s_true  # (F, 2 nx, nwin): projections on all references, on the own one
    e_spat = proj[:, nx:] - s_true
    e_interf = proj[:, :nx] - s_true
    e_interf -= e_spat
    e_artif = -s_true
    e_artif -= e_spat
    e_artif -= e_interf
    e_artif += _window_spectra(estimates, starts, length, weight)
    energy = [_energy(part, nsrc) for part in (s_true, e_spat, e_interf, e_artif)]
    image = s_true + e_spat
    energy.append(_energy(image, nsrc))
    image += e_interf  # s_true + e_spat + e_interf
    energy.append(_energy(image, nsrc))
    e_spat += e_interf
    e_spat += e_artif  # e_spat + e_interf + e_artif
    energy.append(_energy(e_spat, nsrc))
    s_true_e, spat_e, interf_e, artif_e, image_e, target_e, distortion_e = energy
    return np.stack([s_true_e, distortion_e, spat_e, image_e, interf_e, target_e, artif_e])


def _parseval_weight(nbins: int) -> np.ndarray:
    """sqrt of each rFFT bin's share in the energy of an nfft = 2 (nbins - 1) point signal."""
    nfft = 2 * (nbins - 1)
    weight = np.full(nbins, np.sqrt(2.0 / nfft))
    weight[[0, -1]] = np.sqrt(1.0 / nfft)  # DC and Nyquist stand for themselves only
    return weight


def _energy(z: np.ndarray, nsrc: int) -> np.ndarray:
    """Sum of |z|^2 over frequencies and each source's channels, z (F, nx, nwin) -> (nsrc, nwin)."""
    nbins, nx, nwin = z.shape
    parts = z.view(np.float64).reshape(nbins, nx * nwin * 2)  # real and imaginary parts as columns
    columns = np.einsum("fk,fk->k", parts, parts)  # one pass down each column
    return columns.reshape(nsrc, nx // nsrc, nwin, 2).sum(axis=(1, 3))


def _db(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """10 log10(num / den), +inf where den is 0 (museval's _safe_db)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = 10 * np.log10(num / den)
    return np.where(den == 0, np.inf, ratio)


def _scores(energies: np.ndarray) -> np.ndarray:
    """(4, nsrc, nwin) SDR, ISR, SIR, SAR from the energies of `_energies`."""
    s_true, distortion, spatial, image, interf, target, artif = energies
    return np.stack([_db(s_true, distortion), _db(s_true, spatial), _db(image, interf), _db(target, artif)])


def evaluate(
    references: np.ndarray,
    estimates: np.ndarray,
    win: int = 44100,
    hop: int = 44100,
) -> Scores:
    """BSSEval v4 image metrics, as ``museval.evaluate(references, estimates, win, hop)``.

    references, estimates: (nsrc, nsamples, nchan); estimates are cut or zero-padded to the
    references' length. win, hop: window and hop in samples.
    Returns SDR, ISR, SIR, SAR, each (nsrc, nwin), NaN in windows where a source is silent.
    Raises EvaluationError (a ValueError) for inputs museval cannot score.
    """
    refs = _as_sources(references, "references")
    ests = _as_sources(estimates, "estimates")
    _check_pair(refs, ests)
    _check_window(win, hop)
    ests = _fit_length(ests, refs.shape[1])
    active = [_active(refs), _active(ests)]
    _check_not_silent(active[0], "reference")
    _check_not_silent(active[1], "estimated")
    starts, length = _window_starts(refs.shape[1], int(win), int(hop))
    silent = _silent_windows(active, starts, length)
    scores = np.full((4, refs.shape[0], starts.size), np.nan)
    if not silent.all():
        scores[:, :, ~silent] = _score_windows(refs, ests, starts[~silent], length)
    sdr, isr, sir, sar = scores
    return sdr, isr, sir, sar


def _score_windows(refs: np.ndarray, ests: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """(4, nsrc, nwin) scores of the windows at `starts`, filters fitted on the whole signals."""
    c_all, c_own = _filters(refs, ests, FILTER_LEN)
    nfft = scipy.fft.next_fast_len(length + FILTER_LEN - 1, real=True)
    spectra = _filter_spectra(c_all, c_own, nfft)
    # per window: spectra of nx references and estimates, 2 nx projections, ~6 nx temporaries
    per_chunk = max(1, _CHUNK_BYTES // (10 * refs.shape[0] * refs.shape[2] * nfft * 8))
    energies = [
        _energies(spectra, refs, ests, starts[k : k + per_chunk], length)
        for k in range(0, starts.size, per_chunk)
    ]
    return _scores(np.concatenate(energies, axis=2))


# --- tracks -------------------------------------------------------------------------------------


def eval_track(
    references: Mapping[str, np.ndarray],
    estimates: Mapping[str, np.ndarray],
    track_name: str,
    rate: int = 44100,
    win: float = 1.0,
    hop: float = 1.0,
    evaluator: str = "fast",
) -> museval.TrackStore:
    """``museval.eval_mus_track`` for plain dicts of (nsamples, nchan) arrays.

    references: {target: audio}, in the order musdb's ``track.targets`` would give (only targets
    with an estimate are scored; estimates without a reference are ignored, as in museval).
    Vocals and accompaniment, when both are given, are scored as a pair of their own; the other
    targets (vocals among them) are scored together, and vocals keeps its pair scores. Fewer than
    two targets, without that pair, warn and give an empty store, as museval does.
    win, hop: seconds. evaluator: "fast" (this module) or "museval".
    """
    score = _evaluator(evaluator)
    _check_rate(rate)
    win_n, hop_n = int(win * rate), int(hop * rate)  # museval's conversion to samples
    _check_window(win_n, hop_n)
    targets = [name for name in references if name in estimates]
    store = museval.TrackStore(win=win, hop=hop, track_name=track_name)
    pair = "vocals" in targets and "accompaniment" in targets
    if pair:
        targets.remove("accompaniment")
    if len(targets) >= 2:
        results = _score_targets(score, references, estimates, targets, win_n, hop_n)
        for name, values in results.items():
            if not (pair and name == "vocals"):
                store.add_target(target_name=name, values=values)
    elif not pair:
        warnings.warn(
            "Incorrect usage of BSSeval : at least two estimates must be provided. "
            "Target score will be empty.",
            UserWarning,
            stacklevel=2,
        )
    if pair:
        results = _score_targets(score, references, estimates, ["vocals", "accompaniment"], win_n, hop_n)
        for name, values in results.items():
            store.add_target(target_name=name, values=values)
    return store


def _evaluator(name: str) -> Callable[[np.ndarray, np.ndarray, int, int], tuple[np.ndarray, ...]]:
    """The scoring function behind `eval_track`'s `evaluator` option."""
    if name == "museval":
        return lambda refs, ests, win, hop: tuple(museval.evaluate(refs, ests, win=win, hop=hop, mode="v4"))
    if name == "fast":
        return lambda refs, ests, win, hop: evaluate(refs, ests, win, hop)
    raise EvaluationError(f"unknown evaluator {name!r}; choose one of {', '.join(EVALUATORS)}")


def _check_rate(rate: Any) -> None:
    if not isinstance(rate, numbers.Integral) or isinstance(rate, bool) or rate <= 0:
        raise EvaluationError(f"rate must be a positive whole number of samples per second, got {rate!r}")


def _stack_track(
    references: Mapping[str, np.ndarray], estimates: Mapping[str, np.ndarray], targets: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """(nsrc, nsamples, nchan) references and estimates of `targets`, estimates cut or padded."""
    refs = [_as_track_audio(references[name], f"reference {name!r}") for name in targets]
    shapes = {r.shape for r in refs}
    if len(shapes) > 1:
        raise EvaluationError(f"references of {targets} differ in shape: {sorted(shapes)}")
    ests = [_as_track_audio(estimates[name], f"estimate {name!r}") for name in targets]
    for name, est in zip(targets, ests, strict=True):
        if est.shape[1] != refs[0].shape[1]:
            raise EvaluationError(
                f"estimate {name!r} has {est.shape[1]} channels but its reference has {refs[0].shape[1]}"
            )
    ests = [_fit_length(e[None], refs[0].shape[0])[0] for e in ests]
    return np.stack(refs), np.stack(ests)


def _as_track_audio(audio: Any, name: str) -> np.ndarray:
    arr = np.asarray(audio)
    if arr.ndim != 2:
        raise EvaluationError(f"{name} must be shaped (nsamples, nchan), got shape {arr.shape}")
    return arr


def _score_targets(
    score: Callable[[np.ndarray, np.ndarray, int, int], tuple[np.ndarray, ...]],
    references: Mapping[str, np.ndarray],
    estimates: Mapping[str, np.ndarray],
    targets: list[str],
    win: int,
    hop: int,
) -> dict[str, dict[str, list[float]]]:
    """{target: {metric: framewise scores}} of `targets` evaluated together."""
    refs, ests = _stack_track(references, estimates, targets)
    sdr, isr, sir, sar = score(refs, ests, win, hop)
    return {
        name: {"SDR": sdr[i].tolist(), "SIR": sir[i].tolist(), "ISR": isr[i].tolist(), "SAR": sar[i].tolist()}
        for i, name in enumerate(targets)
    }
