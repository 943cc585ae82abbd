"""Streaming separation with a unidirectional Open-Unmix: audio in blocks, each block's output out at once.

How a block of `block` samples (a multiple of the hop) travels:
- Causal STFT: the last nfft - nhop input samples are kept; with the new block they give block / nhop
  frames, each a window of nfft samples ending at a hop boundary, the newest ending at the newest
  sample. Frame k of the stream covers input samples [(k + 1) * nhop - nfft, (k + 1) * nhop), zeros
  before the stream starts: the frames `torch.stft(center=False)` gives for the input with
  nfft - nhop zeros in front.
- The network: each target's `OpenUnmix` rewritten for one stream (`streaming_net.StreamingNet`):
  the same function, its affine steps folded into its Linears and its LSTM run frame by frame with
  (h, c) carried from block to block. Every step of the network works on one frame at a time, so
  the frames of a stream pass through the computation they would pass through in one call on the
  whole spectrogram. Its weights are float32 or, on the CPU, float16 (half the bytes per frame).
- Masking: what openunmix's `wiener` computes with niter=0 (each target's magnitude estimate with
  the mixture's phase, or its softmask ratio), written out directly because wiener's atan2 alone
  costs about as much as the rest of a small model's block. The EM iterations (niter > 0) mix
  statistics across frames and are not causal, so streaming never uses them, whatever the
  Separator's own niter.
- Overlap-add ISTFT: each frame's inverse FFT is windowed and added in; the nhop samples no later
  frame reaches are complete, divided by the (hop-periodic) window-square envelope, and leave.
- The residual (mixture spectrum minus the targets') needs no ISTFT of its own: the mixture's
  overlap-add gives back the input itself, so the residual is the delayed input minus the targets.

So the output is the input's separation delayed by `delay` = nfft - nhop samples: output sample i
belongs to input sample i - delay. `stream_separate` removes that delay for whole files.

Where the time goes (hidden 512, one hop, one core, float32): reading the weights, 42 MB a frame,
is about four fifths of a block; the rest is FFTs and per-operation overhead.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from openunmix.model import Separator
from torch import Tensor, nn

from umx_tune.errors import ConfigError, ModelError
from umx_tune.separation.offline import estimate_names
from umx_tune.separation.streaming_net import StreamingNet, check_precision

WIENER_EPS = 1e-10  # openunmix.filtering.wiener's default eps, for the softmask ratio


def check_streamable(separator: Separator) -> None:
    """ModelError unless every target network has a unidirectional LSTM."""
    for name, unmix in separator.target_models.items():
        if unmix.lstm.bidirectional:
            raise ModelError(
                f"the {name} model has a bidirectional LSTM, which needs the whole signal and cannot "
                "stream; train a causal model with --unidirectional"
            )


def check_block(block: int, nhop: int) -> int:
    """ConfigError unless block is a positive multiple of the STFT hop; returns block."""
    if block < nhop or block % nhop:
        raise ConfigError(
            f"block={block} samples must be a multiple of the model's STFT hop ({nhop} samples), at least one"
        )
    return block


def delay_samples(nfft: int, nhop: int) -> int:
    """Samples between an input sample and its output sample in a stream: nfft - nhop."""
    return nfft - nhop


def latency_ms(nfft: int, nhop: int, block: int, sample_rate: float) -> float:
    """Algorithmic latency: fill a block + overlap-add delay + one block period to compute it in.

    With blocks of one hop this is the STFT window plus one hop.
    """
    return 1000.0 * (delay_samples(nfft, nhop) + 2 * block) / sample_rate


def window_envelope(window: Tensor, nhop: int) -> Tensor:
    """Overlap-added squared window over one hop, (nhop,): what a steady-state OLA output divides by."""
    nfft = window.shape[-1]
    # zero-pad the squared window to whole hops, then fold it: (nb_hops, nhop) summed over the hops
    squared = nn.functional.pad(window**2, (0, (-nfft) % nhop))
    envelope = squared.reshape(-1, nhop).sum(0)
    if float(envelope.min()) < 1e-11:
        raise ModelError(f"nfft={nfft}, nhop={nhop}: the window does not overlap-add; nhop must be < nfft")
    return envelope


def _phase(spectrum: Tensor, magnitude: Tensor) -> Tensor:
    """Unit phasors of a complex tensor; 1 where it is 0 (atan2(0, 0) = 0, as openunmix's atan2)."""
    return torch.where(magnitude > 0, spectrum / magnitude.clamp_min(1e-30), torch.ones_like(spectrum))


class StreamingSeparator:
    """Separates one stream block by block; see the module docstring for the design.

    process() takes (nb_channels, block) and returns (nb_sources, nb_channels, block): the targets in
    the Separator's order, then the residual if the Separator has one, `delay` samples late.
    """

    def __init__(
        self,
        separator: Separator,
        block: int | None = None,
        device: torch.device | None = None,
        precision: str = "float32",
    ):
        check_streamable(separator)
        self.device = device or separator.stft.window.device
        check_precision(precision, self.device)
        self.nfft = int(separator.stft.n_fft)
        self.nhop = int(separator.stft.n_hop)
        self.block = check_block(self.nhop if block is None else block, self.nhop)  # 0 is refused
        self.sample_rate = float(separator.sample_rate)
        self.softmask = bool(separator.softmask)
        self.residual = bool(separator.residual)
        self.mono = bool(separator.complexnorm.mono)
        self.window = separator.stft.window.detach().to(self.device)
        self.envelope = window_envelope(self.window, self.nhop)
        self._block_envelope = self.envelope.repeat(self.block // self.nhop)  # (block,)
        # each target's network rewritten for one stream; the Separator itself is untouched
        self.nets = [StreamingNet(net, precision, self.device) for net in separator.target_models.values()]
        self.reset()

    @property
    def delay(self) -> int:
        """Samples between an input sample and its output sample: nfft - nhop."""
        return delay_samples(self.nfft, self.nhop)

    @property
    def latency_ms(self) -> float:
        """See `latency_ms`."""
        return latency_ms(self.nfft, self.nhop, self.block, self.sample_rate)

    def reset(self) -> None:
        """Start a new stream: silence before it, no LSTM state."""
        self._history: Tensor | None = None  # (nb_channels, nfft - nhop) last input samples
        self._tail: Tensor | None = None  # (nb_targets, nb_channels, nfft - nhop) partial OLA sums
        for net in self.nets:
            net.reset()

    def process(self, audio: Tensor) -> Tensor:
        """One block (nb_channels, block) in, (nb_sources, nb_channels, block) out, delay samples late."""
        if audio.shape[-1] != self.block:
            raise ValueError(f"process() takes blocks of {self.block} samples, got {audio.shape[-1]}")
        with torch.inference_mode():
            audio = audio.to(self.device, torch.float32)
            if self._history is None:
                self._history = audio.new_zeros(audio.shape[0], self.delay)
            segment = torch.cat([self._history, audio], -1)  # (nb_channels, nfft - nhop + block)
            self._history = segment[:, segment.shape[-1] - self.delay :]
            # (nb_channels, nb_frames, nfft): frame i is segment[:, i * nhop : i * nhop + nfft]
            frames = segment.unfold(-1, self.nfft, self.nhop)
            spectrum = torch.fft.rfft(frames * self.window, dim=-1)  # (nb_channels, nb_frames, nb_bins)
            targets = self._overlap_add(self._separate_frames(spectrum))  # (nb_targets, nb_channels, block)
            if not self.residual:
                return targets
            # The mixture's own overlap-add would give back the input delay samples late, which is
            # segment's start; the residual (mixture spectrum minus the targets') is that minus the targets.
            residual = segment[:, : self.block] - targets.sum(0)
            return torch.cat([targets, residual[None]])

    def _separate_frames(self, spectrum: Tensor) -> Tensor:
        """(nb_channels, nb_frames, nb_bins) complex mixture -> (nb_targets, nb_channels, nb_frames,
        nb_bins) complex target estimates."""
        mixture_magnitude = spectrum.abs()
        # what the Separator's ComplexNorm gives the networks (a mono model's one channel broadcasts
        # over the mixture's channels below)
        magnitude = mixture_magnitude.mean(0, keepdim=True) if self.mono else mixture_magnitude
        # OpenUnmix's estimate is gains * magnitude
        gains = torch.stack([net.gains(magnitude) for net in self.nets])  # (nb_targets, nb_channels, ...)
        if self.softmask:  # the estimates' share of their sum, as a ratio mask on the mixture
            estimates = gains * magnitude
            return spectrum * (estimates / (WIENER_EPS + estimates.sum(0, keepdim=True)))
        if self.mono:  # the estimated magnitudes with the mixture's phase
            return gains * magnitude * _phase(spectrum, mixture_magnitude)
        # the same for a stereo model: gains * |X| with X's phase is gains * X where |X| > 0, and
        # where |X| = 0 both are 0
        return gains * spectrum

    def _overlap_add(self, spectra: Tensor) -> Tensor:
        """(nb_targets, nb_channels, nb_frames, nb_bins) complex -> the nb_frames * nhop samples they
        complete, (nb_targets, nb_channels, nb_frames * nhop)."""
        frames = torch.fft.irfft(spectra, n=self.nfft, dim=-1) * self.window  # (..., nb_frames, nfft)
        nb_targets, nb_channels, nb_frames, _ = frames.shape
        if self._tail is None:
            self._tail = frames.new_zeros(nb_targets, nb_channels, self.delay)
        out = frames.new_zeros(nb_targets, nb_channels, (nb_frames - 1) * self.nhop + self.nfft)
        out[..., : self.delay] += self._tail
        for i in range(nb_frames):
            out[..., i * self.nhop : i * self.nhop + self.nfft] += frames[:, :, i]
        done = nb_frames * self.nhop
        # no later frame reaches the first `done` samples; the rest wait for the next block's frames
        self._tail = out[..., done:]
        # out starts on a frame boundary, so the hop-periodic envelope tiles it from its start
        return out[..., :done] / self._block_envelope


@dataclass
class StreamResult:
    """Separated audio (nb_sources, nb_channels, nb_samples), delay removed, and per-block compute times."""

    estimates: Tensor
    block_seconds: list[float]
    names: list[str]
    # the calling thread's CPU time per block: with one torch thread, the compute alone, whatever
    # else the machine runs (a shared machine's load inflates wall time, much less this)
    block_cpu_seconds: list[float]


def stream_separate(
    separator: Separator,
    audio: Tensor,
    block: int | None = None,
    device: torch.device | None = None,
    precision: str = "float32",
) -> StreamResult:
    """Stream audio (nb_channels, nb_samples) through a StreamingSeparator as a live input would.

    The input is followed by silence until the last sample has left (delay more samples); the output
    is aligned with the input and cut to its length. Each block's time covers taking it in, separating
    it and handing its output back on the CPU (that also waits for a GPU).
    """
    streamer = StreamingSeparator(separator, block, device, precision)
    nb_samples = audio.shape[-1]
    total = math.ceil((nb_samples + streamer.delay) / streamer.block) * streamer.block
    padded = nn.functional.pad(audio.float().cpu(), (0, total - nb_samples))  # (nb_channels, total)
    outputs, seconds, cpu_seconds = [], [], []
    for start in range(0, total, streamer.block):
        tic, cpu_tic = time.perf_counter(), time.thread_time()
        outputs.append(streamer.process(padded[:, start : start + streamer.block]).cpu())
        seconds.append(time.perf_counter() - tic)
        cpu_seconds.append(time.thread_time() - cpu_tic)
    # (nb_sources, nb_channels, total) -> drop the delay, keep the input's length
    estimates = torch.cat(outputs, -1)[..., streamer.delay : streamer.delay + nb_samples]
    return StreamResult(estimates, seconds, estimate_names(separator), cpu_seconds)


def stream_estimates(
    separator: Separator, audio: np.ndarray, block: int | None, device: torch.device, precision: str
) -> dict[str, np.ndarray]:
    """Streamed separation of (nb_channels, nb_samples), as `separate` returns it: {name: (nb_samples,
    nb_channels)}."""
    result = stream_separate(separator, torch.from_numpy(audio), block, device, precision)
    # (nb_sources, nb_channels, nb_samples) -> per source (nb_samples, nb_channels), as soundfile writes
    return {name: result.estimates[k].T.numpy() for k, name in enumerate(result.names)}
