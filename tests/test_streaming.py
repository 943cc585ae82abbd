"""Streaming separation equals the offline separation of the same model on the same frames.

What "equal" compares: `stream_separate` (blocks through StreamingSeparator: ring-buffer STFT, the
network's forward per block with (h, c) carried, masking, overlap-add) against an offline reference
computed in one go from library calls: `torch.stft(center=False)` of the input with nfft - nhop
zeros in front, the network's forward over the whole spectrogram, openunmix's `wiener` with niter=0
(the streaming code writes that masking out itself) and `torch.istft` (whose window envelope is
computed independently of the streaming code). Both are aligned to the input (the stream's fixed
delay of nfft - nhop samples removed) and must agree to within 1e-5 of the reference's peak
amplitude, every sample of every source and channel, with float32 weights; with float16 weights
(half the bytes per frame) to within 2e-4 (measured up to 4.5e-5).
"""

from __future__ import annotations

import math

import pytest
import torch
from openunmix.filtering import wiener
from openunmix.model import Separator

from umx_tune.config import SAMPLE_RATE, TrainConfig
from umx_tune.errors import ConfigError, ModelError
from umx_tune.separation.model import build_separator, build_unmix
from umx_tune.separation.streaming import StreamingSeparator, check_block, stream_separate
from umx_tune.separation.streaming_net import check_precision

TOLERANCE = 1e-5  # of the reference's peak; float32 rounding gives ~2e-7
FLOAT16_TOLERANCE = 2e-4  # of the reference's peak, for float16 weights


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_separator(nfft: int, nhop: int, *, unidirectional: bool = True, nb_channels: int = 2) -> Separator:
    """A small Open-Unmix with random weights and random BatchNorm statistics and input scaling."""
    config = TrainConfig.from_dict(
        {
            "hidden_size": 12,
            "nfft": nfft,
            "nhop": nhop,
            "unidirectional": unidirectional,
            "nb_channels": nb_channels,
            "bandwidth": 12000,
        }
    )
    torch.manual_seed(1)
    unmix = build_unmix(config)
    with torch.no_grad():
        for bn in (unmix.bn1, unmix.bn2, unmix.bn3):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
        unmix.input_mean.normal_(0, 0.1)
        unmix.input_scale.uniform_(0.5, 2.0)
    return build_separator(config, unmix, niter=0)


def offline_reference(separator: Separator, audio: torch.Tensor, block: int) -> torch.Tensor:
    """(nb_channels, nb_samples) -> (nb_sources, nb_channels, nb_samples), computed on the whole signal.

    The input gets nfft - nhop zeros in front (the stream's silence before it starts) and as many
    zeros behind as the stream pushes to flush its last block.
    """
    nfft, nhop = separator.stft.n_fft, separator.stft.n_hop
    delay, nb_samples = nfft - nhop, audio.shape[-1]
    total = math.ceil((nb_samples + delay) / block) * block
    padded = torch.nn.functional.pad(audio, (delay, total - nb_samples))
    window = separator.stft.window
    spectrum = torch.stft(padded, nfft, nhop, window=window, center=False, return_complex=True)
    mix = torch.view_as_real(spectrum)  # (nb_channels, nb_bins, nb_frames, 2)
    unmix = next(iter(separator.target_models.values()))
    with torch.no_grad():
        estimate = unmix(separator.complexnorm(mix[None]))  # (1, nb_channels, nb_bins, nb_frames)
        # wiener's layout: (nb_frames, nb_bins, nb_channels, nb_targets=1) and (..., nb_channels, 2)
        sources = wiener(
            estimate[0].permute(2, 1, 0)[..., None],
            mix.permute(2, 1, 0, 3),
            0,
            softmask=separator.softmask,
            residual=True,
        )
    # (nb_frames, nb_bins, nb_channels, 2, nb_sources) -> (nb_sources, nb_channels, nb_bins, nb_frames)
    spectra = torch.view_as_complex(sources.permute(4, 2, 1, 0, 3).contiguous())
    # torch.istft(center=False) rejects a Hann window (zero envelope at sample 0); center=True on the
    # same frames reconstructs padded[nfft // 2 :], and the input starts at delay >= nfft // 2
    half = nfft // 2
    flat = spectra.reshape(-1, *spectra.shape[2:])  # (nb_sources * nb_channels, nb_bins, nb_frames)
    out = torch.istft(flat, nfft, nhop, window=window, center=True, length=delay - half + nb_samples)
    return out.reshape(*spectra.shape[:2], -1)[..., delay - half :]


@pytest.mark.parametrize(
    ("nfft", "nhop", "nb_channels"),
    [(512, 128, 2), (256, 96, 2), (256, 64, 1)],  # 96 does not divide 256: an uneven envelope
)
@pytest.mark.parametrize("hops_per_block", [1, 3])
@pytest.mark.parametrize(("precision", "tolerance"), [("float32", TOLERANCE), ("float16", FLOAT16_TOLERANCE)])
def test_streaming_equals_offline(
    nfft: int, nhop: int, nb_channels: int, hops_per_block: int, precision: str, tolerance: float
) -> None:
    separator = random_separator(nfft, nhop, nb_channels=nb_channels)
    audio = 0.2 * torch.randn(2, SAMPLE_RATE // 4, generator=torch.Generator().manual_seed(0))
    block = hops_per_block * nhop
    streamed = stream_separate(separator, audio, block, precision=precision).estimates
    reference = offline_reference(separator, audio, block)
    assert streamed.shape == reference.shape == (2, 2, audio.shape[-1])
    peak = float(reference.abs().max())
    assert peak > 0.01
    assert float((streamed - reference).abs().max()) <= tolerance * peak
    # the residual is the mixture minus the target, so together they give the input back
    torch.testing.assert_close(streamed.sum(0), audio, atol=1e-4, rtol=0)


def test_streaming_equals_offline_with_a_softmask() -> None:
    separator = random_separator(512, 128)
    separator.softmask = True  # ratio masks instead of magnitudes with the mixture's phase
    audio = 0.2 * torch.randn(2, SAMPLE_RATE // 8, generator=torch.Generator().manual_seed(2))
    streamed = stream_separate(separator, audio, 256).estimates
    reference = offline_reference(separator, audio, 256)
    assert float((streamed - reference).abs().max()) <= TOLERANCE * float(reference.abs().max())


@pytest.mark.parametrize("nb_channels", [2, 1])
def test_streaming_equals_offline_through_digital_silence(nb_channels: int) -> None:
    """Bins where the mixture is exactly 0: openunmix gives them phase 0 (atan2(0, 0)). A stereo model's
    estimate is 0 there too; a mono model's (from both channels' mean) is not where one channel alone
    is silent."""
    separator = random_separator(512, 128, nb_channels=nb_channels)
    audio = 0.2 * torch.randn(2, SAMPLE_RATE // 4, generator=torch.Generator().manual_seed(3))
    audio[:, : SAMPLE_RATE // 16] = 0.0  # both channels silent at the start
    audio[1, SAMPLE_RATE // 8 :] = 0.0  # then the right channel alone
    streamed = stream_separate(separator, audio, 128).estimates
    reference = offline_reference(separator, audio, 128)
    assert float((streamed - reference).abs().max()) <= TOLERANCE * float(reference.abs().max())


def test_equality_needs_the_carried_state() -> None:
    """Control: a stream that forgets its LSTM state between blocks is far off, so the test can fail."""
    separator = random_separator(512, 128)
    audio = 0.2 * torch.randn(2, SAMPLE_RATE // 8, generator=torch.Generator().manual_seed(0))
    streamer = StreamingSeparator(separator, 128)
    padded = torch.nn.functional.pad(
        audio, (0, 128 * math.ceil((audio.shape[-1] + 384) / 128) - audio.shape[-1])
    )
    outputs = []
    for start in range(0, padded.shape[-1], 128):
        for net in streamer.nets:
            net.reset()
        outputs.append(streamer.process(padded[:, start : start + 128]))
    forgetful = torch.cat(outputs, -1)[..., 384 : 384 + audio.shape[-1]]
    reference = offline_reference(separator, audio, 128)
    assert float((forgetful - reference).abs().max()) > 100 * TOLERANCE * float(reference.abs().max())


def test_each_block_leaves_as_soon_as_it_can() -> None:
    """An impulse comes out exactly nfft - nhop samples after it went in, in the block that completes it."""
    separator = random_separator(512, 128)
    streamer = StreamingSeparator(separator, 256)
    assert streamer.delay == 384
    assert streamer.latency_ms == pytest.approx(1000 * (384 + 2 * 256) / SAMPLE_RATE)
    impulse = torch.zeros(2, 256 * 8)
    impulse[:, 300] = 1.0
    out = torch.cat([streamer.process(impulse[:, i : i + 256]) for i in range(0, 256 * 8, 256)], -1)
    # the mixture = target + residual is passed through, shifted by the delay
    mix = out.sum(0)
    assert int(mix[0].abs().argmax()) == 300 + 384
    torch.testing.assert_close(mix[:, 384:], impulse[:, :-384], atol=1e-5, rtol=0)


def test_streaming_leaves_the_separator_alone() -> None:
    separator = random_separator(256, 64)
    lstm = next(iter(separator.target_models.values())).lstm
    StreamingSeparator(separator).process(torch.randn(2, 64))
    assert isinstance(next(iter(separator.target_models.values())).lstm, torch.nn.LSTM)
    assert next(iter(separator.target_models.values())).lstm is lstm


def test_bidirectional_model_cannot_stream() -> None:
    separator = random_separator(256, 64, unidirectional=False)
    with pytest.raises(ModelError, match="bidirectional"):
        StreamingSeparator(separator)


def test_precision_must_be_known_and_float16_is_for_the_cpu() -> None:
    with pytest.raises(ConfigError, match="precision='bfloat16' is not one of float32, float16"):
        check_precision("bfloat16", torch.device("cpu"))
    with pytest.raises(ConfigError, match="on cuda use float32"):
        check_precision("float16", torch.device("cuda"))
    assert check_precision("float16", torch.device("cpu")) == "float16"


@pytest.mark.parametrize("block", [0, 32, 96, 100])
def test_block_must_be_whole_hops(block: int) -> None:
    with pytest.raises(ConfigError, match="multiple of the model's STFT hop"):
        check_block(block, 64)
    assert check_block(192, 64) == 192
