"""Every run's listening excerpt (audio/): one real `umx-tune train` of the tiny config against a real
`mlflow server`, its FLAC files read back and compared with the test track and with a second
separation of it; `umx-tune evaluate` choosing another track, clipping, and `--no-audio`; the bad
input; and, in a real headless Chromium, the MLflow UI playing the estimate for the excerpt's length.

With UMX_TUNE_UPDATE_SCREENSHOT=1 the player's screenshot replaces the README's
(docs/images/mlflow-listen.png).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
import soundfile as sf
from chromium import chromium_page, keep_screenshot, open_artifact
from conftest import REPO, TINY, MlflowServer, assert_one_line_error, run_main
from mlflow.tracking import MlflowClient
from PIL import Image

from umx_tune import tracking
from umx_tune.cli.options import option_name
from umx_tune.config import SAMPLE_RATE, TrainConfig
from umx_tune.data.dataset import open_dataset

TINY_ARGS = [arg for name, value in TINY.items() for arg in (option_name(name), str(value))]
DATA_ARGS = TINY_ARGS[TINY_ARGS.index("--synth-tracks") :]  # what `evaluate` takes of them
EXPERIMENT = "listen-tests"
SECONDS = 1.5  # of the tiny 2-second tracks
FIRST_TRACK = "synth-test-000"
ESTIMATE = tracking.excerpt_artifact(tracking.EXCERPT_ESTIMATE, "vocals")
FILES = {
    tracking.excerpt_artifact(tracking.EXCERPT_MIXTURE),
    tracking.excerpt_artifact(tracking.EXCERPT_REFERENCE, "vocals"),
    ESTIMATE,
    tracking.excerpt_artifact(tracking.EXCERPT_ESTIMATE, "accompaniment"),
}
QUANTUM = 1 / 32768  # one step of 16-bit PCM
SCREENSHOT = REPO / "docs" / "images" / "mlflow-listen.png"
Capture = pytest.CaptureFixture[str]


@pytest.fixture(scope="module")
def listened_run(mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    """One `umx-tune train` of the tiny config with a 1.5-second excerpt of the first test track."""
    mlflow.set_tracking_uri(mlflow_server.uri)
    checkpoints = str(tmp_path_factory.mktemp("listen-checkpoints"))
    args = [*TINY_ARGS, "--listen-seconds", str(SECONDS), "--experiment", EXPERIMENT, "--quiet"]
    try:
        done = run_main(None, "train", *args, "--checkpoint-dir", checkpoints)
    finally:
        mlflow.set_tracking_uri(None)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "warning" not in done.stderr  # 1.5 s fit into the track
    client = MlflowClient(mlflow_server.uri)
    (run,) = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    return run.info.run_id


def audio_files(client: MlflowClient, run_id: str, folder: Path) -> dict[str, tuple[np.ndarray, int]]:
    """The run's audio/ FLAC files: {artifact path: ((nb_samples, nb_channels) float, sample rate)}."""
    local = Path(client.download_artifacts(run_id, tracking.AUDIO_ARTIFACT_DIR, str(folder)))
    return {
        f"{tracking.AUDIO_ARTIFACT_DIR}/{path.name}": sf.read(path, always_2d=True)
        for path in local.glob(f"*{tracking.AUDIO_EXTENSION}")
    }


def excerpt_tag(client: MlflowClient, run_id: str) -> dict[str, Any]:
    return json.loads(client.get_run(run_id).data.tags[tracking.TAG_LISTEN_EXCERPT])


def test_run_logs_the_excerpt_the_evaluation_separated(
    listened_run: str, tracking_uri: str, tmp_path: Path
) -> None:
    client = MlflowClient(tracking_uri)
    files = audio_files(client, listened_run, tmp_path)
    assert set(files) == FILES
    frames = round(SECONDS * SAMPLE_RATE)
    for audio, rate in files.values():
        assert rate == SAMPLE_RATE and audio.shape == (frames, 2)
    assert excerpt_tag(client, listened_run) == {
        "track": FIRST_TRACK,
        "target": "vocals",
        "start": 0,
        "frames": frames,
        "requested": SECONDS,
    }
    # the mixture and reference are the track's first 1.5 s, to 16-bit precision
    track = open_dataset(TrainConfig.from_dict(TINY)).test[0]
    assert track.name == FIRST_TRACK
    for stem, part in (("mixture", tracking.EXCERPT_MIXTURE), ("vocals", tracking.EXCERPT_REFERENCE)):
        logged = files[tracking.excerpt_artifact(part, "" if stem == "mixture" else stem)][0]
        np.testing.assert_allclose(logged, track.read(stem)[:, :frames].T, atol=QUANTUM)
    # the estimates are the logged model's separation of the whole track, cut
    from umx_tune.separation.offline import separate
    from umx_tune.tracking.models import load_separator

    separator = load_separator(listened_run, torch_cpu())
    estimates = separate(separator, track.read("mixture"), torch_cpu())
    for name, part in (("vocals", "vocals"), ("residual", "accompaniment")):
        expected = np.clip(estimates[name][:frames], -1, 1)
        logged = files[tracking.excerpt_artifact(tracking.EXCERPT_ESTIMATE, part)][0]
        np.testing.assert_allclose(logged, expected, atol=QUANTUM + 1e-5)
    assert np.abs(files[ESTIMATE][0]).max() > 100 * QUANTUM  # not silence


def torch_cpu() -> Any:
    import torch

    return torch.device("cpu")


def test_spectrograms_are_a_readable_png(listened_run: str, tracking_uri: str, tmp_path: Path) -> None:
    client = MlflowClient(tracking_uri)
    png = Path(client.download_artifacts(listened_run, tracking.SPECTROGRAMS_ARTIFACT, str(tmp_path)))
    with Image.open(png) as image:
        assert image.format == "PNG" and 700 <= image.width <= 1200 and 500 <= image.height <= 900
        low, high = image.convert("L").getextrema()
        assert high - low > 150


def test_spectrograms_share_one_colour_scale_on_a_log_frequency_axis() -> None:
    """A tone as reference and the same tone 40 dB quieter as estimate: both panels on one scale
    (a scale of its own would make the estimate look as loud), frequencies on a log axis."""
    import matplotlib.pyplot as plt

    from umx_tune.report.plots import spectrograms_figure

    tone = np.sin(2 * np.pi * 440 * np.arange(SAMPLE_RATE) / SAMPLE_RATE)[:, None].repeat(2, axis=1)
    figure = spectrograms_figure(tone, 0.01 * tone, SAMPLE_RATE)
    try:
        reference, estimate = (ax.collections[0] for ax in figure.axes[:2])
        assert reference.get_clim() == estimate.get_clim()
        assert estimate.get_array().max() == pytest.approx(reference.get_array().max() - 40, abs=0.1)
        assert [ax.get_yscale() for ax in figure.axes[:2]] == ["log", "log"]
        assert figure.axes[0].get_ylim()[0] >= 20  # no 0 Hz on a log axis
    finally:
        plt.close(figure)


def test_evaluate_takes_the_named_track_and_clips_to_its_length(
    listened_run: str, tracking_uri: str, tmp_path: Path, capsys: Capture
) -> None:
    """A dataset with two test tracks; the second, asked for 100 s of its 2 s: the whole track, said."""
    args = [*DATA_ARGS, "--synth-tracks", "8", "--listen-track", "synth-test-001", "--listen-seconds", "100"]
    done = run_main(
        capsys, "evaluate", "--model", listened_run, *args, "--experiment", "listen-eval", "--quiet"
    )
    assert done.returncode == 0, done.stderr
    assert (
        "umx-tune: warning: listen_seconds=100 is longer than test track 'synth-test-001' (2.00 s); "
        "its excerpt is the whole track"
    ) in done.stderr.splitlines()
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("listen-eval").experiment_id])
    tag = excerpt_tag(client, run.info.run_id)
    assert (tag["track"], tag["frames"], tag["requested"]) == ("synth-test-001", 2 * SAMPLE_RATE, 100.0)
    files = audio_files(client, run.info.run_id, tmp_path)
    assert set(files) == FILES and all(a.shape == (2 * SAMPLE_RATE, 2) for a, _ in files.values())
    track = open_dataset(TrainConfig.from_dict({**TINY, "synth_tracks": 8})).test[1]
    reference = files[tracking.excerpt_artifact(tracking.EXCERPT_REFERENCE, "vocals")][0]
    np.testing.assert_allclose(reference, track.read("vocals").T, atol=QUANTUM)


@pytest.mark.parametrize(
    "off", [["--no-audio"], ["--audio", "false"]]
)  # the flag, and as MLproject passes it
def test_no_audio_logs_none(off: list[str], listened_run: str, tracking_uri: str, capsys: Capture) -> None:
    experiment = f"no-audio{len(off)}"
    args = [*DATA_ARGS, *off, "--experiment", experiment, "--quiet"]
    done = run_main(capsys, "evaluate", "--model", listened_run, *args)
    assert done.returncode == 0, done.stderr
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert tracking.TAG_LISTEN_EXCERPT not in run.data.tags
    assert tracking.AUDIO_ARTIFACT_DIR not in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert tracking.EVAL_ARTIFACT_DIR in {a.path for a in client.list_artifacts(run.info.run_id)}


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--listen-seconds", "0"], ["listen_seconds=0.0 is out of range; must be > 0"]),
        (["--listen-seconds", "-2"], ["listen_seconds=-2.0 is out of range; must be > 0"]),
        (["--audio", "true", "--no-audio"], ["give --audio or --no-audio, not both"]),
    ],
)
def test_bad_listen_values_are_one_line_errors(
    args: list[str], fragments: list[str], tracking_uri: str, capsys: Capture
) -> None:
    assert_one_line_error(run_main(capsys, "train", *TINY_ARGS, *args, "--quiet"), *fragments)


def test_unknown_listen_track_fails_before_training(
    tracking_uri: str, tmp_path: Path, capsys: Capture
) -> None:
    args = [
        "--listen-track",
        "nope",
        "--experiment",
        "listen-bad",
        "--checkpoint-dir",
        str(tmp_path),
        "--quiet",
    ]
    message = "listen_track='nope' is not a test track; choose one of synth-test-000"
    assert_one_line_error(run_main(capsys, "train", *TINY_ARGS, *args), message)
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("listen-bad").experiment_id])
    assert run.info.status == "FAILED" and message in run.data.tags[tracking.TAG_ERROR]
    assert tracking.TRAIN_LOSS not in run.data.metrics  # not one epoch trained


def test_evaluate_refuses_an_unknown_track_before_its_run(
    listened_run: str, tracking_uri: str, capsys: Capture
) -> None:
    args = [*DATA_ARGS, "--listen-track", "synth-test-9", "--experiment", "listen-bad-eval", "--quiet"]
    done = run_main(capsys, "evaluate", "--model", listened_run, *args)
    assert_one_line_error(done, "listen_track='synth-test-9' is not a test track", progress_before=True)
    assert MlflowClient(tracking_uri).get_experiment_by_name("listen-bad-eval") is None  # no run begun


def test_listening_options_change_no_run_signature() -> None:
    base = TrainConfig()
    assert base.replace(listen_track="x", listen_seconds=3.0, audio=False).signature() == base.signature()


@pytest.mark.slow
def test_mlflow_ui_plays_the_estimate(
    listened_run: str, tracking_uri: str, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """On the run's artifact page, selecting audio/estimate_vocals.flac shows MLflow's player (a
    waveform and the audio element), whose audio lasts the excerpt's 1.5 s."""
    experiment_id = MlflowClient(tracking_uri).get_run(listened_run).info.experiment_id
    with chromium_page(tmp_path_factory.mktemp("chromium-profile")) as page:
        open_artifact(page, tracking_uri, experiment_id, listened_run, ESTIMATE)
        preview = page.locator('[data-testid="audio-artifact-preview"]')
        player = preview.locator("audio")  # in wavesurfer's (open) shadow root: Playwright pierces it
        player.wait_for(state="attached")
        duration = player.evaluate(
            """audio => new Promise(resolve => {
                if (audio.readyState >= 1) resolve(audio.duration);
                else audio.addEventListener('loadedmetadata', () => resolve(audio.duration));
            })"""
        )
        assert duration == pytest.approx(SECONDS, abs=0.01)
        # the waveform is drawn: wavesurfer decoded the FLAC too
        preview.locator("canvas").first.wait_for(state="attached")
        keep_screenshot(page, SCREENSHOT, tmp_path)
