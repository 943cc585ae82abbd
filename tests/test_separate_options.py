"""`umx-tune separate` with the options of Open-Unmix's `umx`: other rates, mono, excerpts,
formats, residual names, Wiener settings, target subsets; and its bad input.

One untrained tiny model is logged per module as the pipeline logs one; the commands run in this process
through the entry point (`run_main`), on real audio files written with soundfile.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import TINY, MlflowServer, assert_one_line_error, run_main

from umx_tune.config import SAMPLE_RATE, TrainConfig
from umx_tune.separation.model import build_separator, build_unmix
from umx_tune.tracking.runs import start_run

Capture = pytest.CaptureFixture[str]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_run(mlflow_server: MlflowServer) -> str:
    """The run id of an untrained tiny vocals model, logged as the pipeline logs one."""
    config = TrainConfig.from_dict(TINY)
    torch.manual_seed(0)
    mlflow.set_tracking_uri(mlflow_server.uri)
    try:
        with start_run(experiment="separate-options") as tracker:
            tracker.log_model(
                build_separator(config, build_unmix(config)), {config.target: config.to_params()}
            )
    finally:
        mlflow.set_tracking_uri(None)
    return tracker.run_id


def _write(path: Path, seconds: float, rate: int, channels: int) -> np.ndarray:
    audio = np.random.default_rng(0).uniform(-0.3, 0.3, (int(seconds * rate), channels)).astype(np.float32)
    sf.write(path, audio, rate, subtype="FLOAT")
    return audio


def _separate(capsys: Capture, run_id: str, song: Path, out: Path, *options: str) -> list[Path]:
    done = run_main(
        capsys, "separate", "--model", run_id, str(song), "--out", str(out), "--device", "cpu", *options
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [Path(line) for line in done.stdout.split()]


def test_mono_48k_input_comes_back_at_48k_as_flac(
    model_run: str, tracking_uri: str, tmp_path: Path, capsys: Capture
) -> None:
    song = tmp_path / "song.wav"
    _write(song, 0.5, 48000, 1)
    written = _separate(capsys, model_run, song, tmp_path / "out", "--ext", "flac")
    assert [p.name for p in written] == ["song_vocals.flac", "song_accompaniment.flac"]
    for path in written:
        info = sf.info(str(path))
        # mono is duplicated to stereo, as Open-Unmix does; the estimates go back to the input's rate
        assert (info.format, info.samplerate, info.channels, info.frames) == ("FLAC", 48000, 2, 24000)


def test_excerpt_residual_name_and_wiener_settings(
    model_run: str, tracking_uri: str, tmp_path: Path, capsys: Capture
) -> None:
    song = tmp_path / "song.wav"
    audio = _write(song, 1.0, SAMPLE_RATE, 2)
    options = ("--start", "0.25", "--duration", "0.5", "--residual", "rest", "--niter", "0")
    written = _separate(capsys, model_run, song, tmp_path / "out", *options, "--wiener-win-len", "0")
    assert [p.name for p in written] == ["song_vocals.wav", "song_rest.wav"]
    vocals, rate = sf.read(written[0], dtype="float32")
    rest, _ = sf.read(written[1], dtype="float32")
    assert rate == SAMPLE_RATE and vocals.shape == (SAMPLE_RATE // 2, 2)
    # without EM the masks sum to one: target and residual give the excerpt back
    np.testing.assert_allclose(vocals + rest, audio[SAMPLE_RATE // 4 : 3 * SAMPLE_RATE // 4], atol=1e-4)


def test_bad_input_is_one_line_and_writes_nothing(
    model_run: str, tracking_uri: str, tmp_path: Path, capsys: Capture
) -> None:
    song = tmp_path / "song.wav"
    _write(song, 0.5, SAMPLE_RATE, 2)
    out = tmp_path / "out"
    base = ("separate", "--model", model_run, str(song), "--out", str(out), "--device", "cpu")
    for options, fragment in (
        (("--start", "2"), "beyond the end"),
        (("--ext", "mp3"), "'mp3' is not one of wav, flac"),
        (("--targets", "drums"), "no drums target"),
        (("--residual", "vocals"), "is the name of a target"),
    ):
        assert_one_line_error(run_main(capsys, *base, *options), fragment, progress_before=True)
        assert not out.exists(), options


def test_a_mono_model_separates_stereo_input_in_stereo() -> None:
    """As Open-Unmix's Separator does: the network sees the downmix, the filter each channel."""
    from umx_tune.separation import offline

    config = TrainConfig.from_dict({**TINY, "nb_channels": 1})
    separator = offline.configure(build_separator(config, build_unmix(config)), residual=True, niter=0)
    mixture = np.random.default_rng(0).uniform(-0.3, 0.3, (2, SAMPLE_RATE // 4)).astype(np.float32)
    estimates = offline.separate(separator, mixture, torch.device("cpu"))
    assert {name: e.shape for name, e in estimates.items()} == {
        "vocals": (SAMPLE_RATE // 4, 2),
        "residual": (SAMPLE_RATE // 4, 2),
    }
