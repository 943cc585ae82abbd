"""The study page (report/index.html of a study's parent run): a real three-entry grid of the tiny
config through `umx-tune optimize` against a real `mlflow server`, its page read back when the
study ends, `umx-tune report --study` with a baseline and to a folder, the bad input, and the page
inside the MLflow UI's artifact viewer in a real headless Chromium (its players and plots load).

With UMX_TUNE_UPDATE_SCREENSHOT=1 the screenshot replaces the README's (docs/images/mlflow-study-page.png).
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import mlflow
import numpy as np
import pytest
import soundfile as sf
from chromium import chromium_page, html_artifact_frame, keep_screenshot, open_artifact
from conftest import REPO, TINY, MlflowServer, assert_one_line_error, run_main
from mlflow.tracking import MlflowClient
from study_runs import write_study

from umx_tune import tracking
from umx_tune.cli.options import option_name

TINY_ARGS = [arg for name, value in TINY.items() for arg in (option_name(name), str(value))]
STUDY = "page-grid"
EXPERIMENT = "page-tests"
SECONDS = 1.0
ENTRIES = {  # one epoch each: three configs that separate differently
    "small": {"hidden_size": 8, "epochs": 1},
    "medium": {"hidden_size": 16, "epochs": 1},
    "large": {"hidden_size": 24, "epochs": 1},
}
PLOTS = {"loss_curves.png", "scores.png", "loss_vs_time.png", "sdr_vs_rtf.png"}
ESTIMATE = tracking.excerpt_artifact(tracking.EXCERPT_ESTIMATE, "vocals")
SCREENSHOT = REPO / "docs" / "images" / "mlflow-study-page.png"
Capture = pytest.CaptureFixture[str]


@dataclass
class Player:
    part: str
    caption: str = ""
    src: str = ""


class Page(HTMLParser):
    """The players, images and text of a study page."""

    def __init__(self) -> None:
        super().__init__()
        self.players: list[Player] = []
        self.images: list[tuple[str, str]] = []  # (alt, src)
        self.text: list[str] = []
        self._caption = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "figure" and values.get("class") == "player":
            self.players.append(Player(str(values["data-part"])))
        elif tag == "figcaption" and self.players and not self.players[-1].caption:
            self._caption = True
        elif tag == "audio":
            self.players[-1].src = str(values["src"])
        elif tag == "img":
            self.images.append((str(values["alt"]), str(values["src"])))

    def handle_endtag(self, tag: str) -> None:
        if tag == "figcaption":
            self._caption = False

    def handle_data(self, data: str) -> None:
        if self._caption:
            self.players[-1].caption += data
        self.text.append(data)


def parse(text: str) -> Page:
    page = Page()
    page.feed(text)
    return page


def data_bytes(src: str, mime: str) -> bytes:
    prefix = f"data:{mime};base64,"
    assert src.startswith(prefix), src[:40]
    return base64.b64decode(src[len(prefix) :])


@dataclass
class Study:
    parent_id: str
    runs: dict[str, str]  # grid entry -> run id
    sdr: dict[str, float]
    page: str  # report/index.html as the study's end left it
    note: str
    client: MlflowClient

    @property
    def best(self) -> str:
        return max(self.sdr, key=self.sdr.__getitem__)

    @property
    def worst(self) -> str:
        return min(self.sdr, key=self.sdr.__getitem__)


@pytest.fixture(scope="module")
def study(mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory) -> Study:
    """`umx-tune optimize --grid` of ENTRIES, once; the page and description it left."""
    folder = tmp_path_factory.mktemp("page-study")
    grid = folder / "grid.yaml"
    grid.write_text("entries:\n" + "".join(f"  {n}: {v}\n" for n, v in ENTRIES.items()))
    args = ["--grid", str(grid), "--study-name", STUDY, "--storage", f"sqlite:///{folder / 'optuna.db'}"]
    args += [*TINY_ARGS, "--device", "cpu", "--quiet", "--listen-seconds", str(SECONDS)]
    args += ["--experiment", EXPERIMENT, "--checkpoint-dir", str(folder / "checkpoints")]
    mlflow.set_tracking_uri(mlflow_server.uri)
    try:
        done = run_main(None, "optimize", *args)
    finally:
        mlflow.set_tracking_uri(None)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(mlflow_server.uri)
    runs = client.search_runs(
        [client.get_experiment_by_name(EXPERIMENT).experiment_id],
        tracking.tag_equals(tracking.TAG_STUDY, STUDY),
    )
    (parent,) = [r for r in runs if tracking.TAG_PARENT_RUN not in r.data.tags]
    trials = {r.data.tags[tracking.TAG_GRID_ENTRY]: r for r in runs if tracking.TAG_PARENT_RUN in r.data.tags}
    assert set(trials) == set(ENTRIES)
    page = Path(client.download_artifacts(parent.info.run_id, tracking.STUDY_PAGE_ARTIFACT, str(folder)))
    return Study(
        parent.info.run_id,
        {name: r.info.run_id for name, r in trials.items()},
        {name: r.data.metrics["SDR"] for name, r in trials.items()},
        page.read_text(encoding="utf-8"),
        client.get_run(parent.info.run_id).data.tags[tracking.TAG_NOTE],
        client,
    )


def decoded(player: Player) -> tuple[np.ndarray, int]:
    """A player's audio: Ogg Vorbis, as (nb_samples, nb_channels) and its sample rate."""
    ogg = data_bytes(player.src, "audio/ogg")
    assert ogg[:4] == b"OggS"
    audio, rate = sf.read(io.BytesIO(ogg), always_2d=True)
    return audio, rate


def run_estimate(client: MlflowClient, run_id: str, folder: Path) -> np.ndarray:
    path = client.download_artifacts(run_id, ESTIMATE, str(folder / run_id))
    return sf.read(path, always_2d=True)[0]


def check_players(study: Study, page: Page, other: str, role: str, folder: Path) -> None:
    """Mixture, reference, the best's estimate and other's (the worst or the baseline), each the
    excerpt's length, each estimate a faithful copy of its run's FLAC."""
    assert [p.part for p in page.players] == [
        tracking.excerpt_artifact(tracking.EXCERPT_MIXTURE),
        tracking.excerpt_artifact(tracking.EXCERPT_REFERENCE, "vocals"),
        ESTIMATE,
        ESTIMATE,
    ]
    best_player, other_player = page.players[2:]
    for player, name, label in ((best_player, study.best, "best"), (other_player, other, role)):
        sdr = f"SDR {study.sdr[name]:.3f} dB"
        assert player.caption == f"{label}: {name}, vocals estimate ({sdr}), run {study.runs[name]}"
    for player in page.players:
        audio, rate = decoded(player)
        assert rate == 44100 and audio.shape[1] == 2
        assert len(audio) / rate == pytest.approx(SECONDS, abs=0.01), player.part
    # each estimate is its run's FLAC, re-encoded (the tiny models' estimates are too alike to tell
    # apart through Vorbis: the caption names the run)
    for player, name in ((best_player, study.best), (other_player, other)):
        flac = run_estimate(study.client, study.runs[name], folder)
        audio = decoded(player)[0][: len(flac)]
        snr = 10 * np.log10(np.sum(flac**2) / np.sum((audio - flac) ** 2))
        assert snr > 15, (player.caption, snr)


def test_study_end_logs_the_page_with_players_tables_and_plots(study: Study, tmp_path: Path) -> None:
    artifacts = {
        Path(a.path).name for a in study.client.list_artifacts(study.parent_id, tracking.REPORT_ARTIFACT_DIR)
    }
    assert artifacts == PLOTS | {"index.html"}
    page = parse(study.page)
    check_players(study, page, study.worst, "worst", tmp_path)
    text = " ".join(page.text)
    for name in ENTRIES:
        assert name in text
    assert f"Excerpt: {SECONDS:.2f} s of synth-test-000 from 0.00 s." in text
    # the plots and both configs' spectrograms, embedded (the UI's iframe resolves no relative link)
    alts = [alt for alt, _ in page.images]
    assert {a.replace(" ", "_") + ".png" for a in alts[-len(PLOTS) :]} == PLOTS
    assert alts[:2] == [
        f"best: {study.best}, reference and estimate spectrograms",
        f"worst: {study.worst}, reference and estimate spectrograms",
    ]
    for _, src in page.images:
        assert data_bytes(src, "image/png")[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(study.page) < 2_000_000
    assert f"`{tracking.STUDY_PAGE_ARTIFACT}`" in study.note  # the description points to it


@pytest.mark.slow
def test_page_plays_inside_the_mlflow_ui(
    study: Study, tracking_uri: str, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """In the UI's artifact viewer (a sandboxed iframe of a blob: URL) the page's four players hold
    the excerpt's second, its images load, its tables show. (Before the tests that log the page
    again: the screenshot shows the page the study's end left.)"""
    experiment_id = study.client.get_run(study.parent_id).info.experiment_id
    with chromium_page(tmp_path_factory.mktemp("chromium-profile")) as page:
        open_artifact(page, tracking_uri, experiment_id, study.parent_id, tracking.STUDY_PAGE_ARTIFACT)
        frame = html_artifact_frame(page)
        frame.locator("audio").first.wait_for(state="attached")
        durations = frame.evaluate(
            """() => Promise.all([...document.querySelectorAll('audio')].map(audio => new Promise(resolve => {
                if (audio.readyState >= 1) resolve(audio.duration);
                else audio.addEventListener('loadedmetadata', () => resolve(audio.duration));
            })))"""
        )
        assert durations == pytest.approx([SECONDS] * 4, abs=0.02)
        loaded = frame.evaluate("() => [...document.images].map(i => i.complete && i.naturalWidth > 0)")
        assert loaded and all(loaded)
        assert frame.locator("td", has_text=study.best).count() >= 2  # in both tables
        keep_screenshot(page, SCREENSHOT, tmp_path)


def test_report_plays_a_chosen_baseline(
    study: Study, tracking_uri: str, capsys: Capture, tmp_path: Path
) -> None:
    (middle,) = set(ENTRIES) - {study.best, study.worst}
    done = run_main(capsys, "report", "--study", STUDY, "--baseline", middle)
    assert done.returncode == 0, done.stderr
    assert f"page: {tracking.STUDY_PAGE_ARTIFACT} (artifact of run {study.parent_id})" in done.stderr
    local = study.client.download_artifacts(study.parent_id, tracking.STUDY_PAGE_ARTIFACT, str(tmp_path))
    check_players(study, parse(Path(local).read_text(encoding="utf-8")), middle, "baseline", tmp_path)


def test_report_writes_the_page_to_a_folder(
    study: Study, tracking_uri: str, capsys: Capture, tmp_path: Path
) -> None:
    out = tmp_path / "report"
    done = run_main(capsys, "report", "--study", STUDY, "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert {p.name for p in out.iterdir()} == PLOTS | {"index.html"}
    assert f"page: {out / 'index.html'}" in done.stderr
    check_players(
        study, parse((out / "index.html").read_text(encoding="utf-8")), study.worst, "worst", tmp_path
    )


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (
            ["--baseline", "huge"],
            ["no grid entry or run is named 'huge'", "choose one of large, medium, small"],
        ),
        (["--baseline", "BEST"], ["is the best config by SDR; choose another"]),
        (["--baseline", "small", "--no-plots"], ["--baseline is for the page, which --no-plots leaves out"]),
    ],
)
def test_bad_baseline_is_a_one_line_error(
    study: Study, args: list[str], fragments: list[str], tracking_uri: str, capsys: Capture
) -> None:
    args = [study.best if a == "BEST" else a for a in args]
    before = study.client.list_artifacts(study.parent_id, tracking.REPORT_ARTIFACT_DIR)
    done = run_main(capsys, "report", "--study", STUDY, *args)
    assert_one_line_error(done, *fragments)
    assert done.stdout == ""  # nothing printed, nothing logged
    after = study.client.list_artifacts(study.parent_id, tracking.REPORT_ARTIFACT_DIR)
    assert [(a.path, a.file_size) for a in after] == [(a.path, a.file_size) for a in before]


def test_page_of_runs_without_audio_says_so(
    mlflow_server: MlflowServer, tracking_uri: str, capsys: Capture, tmp_path: Path
) -> None:
    """Runs logged before umx-tune logged audio (or with --no-audio): the page has its tables and
    plots, and says that the best and the worst config have no excerpt."""
    client = MlflowClient(mlflow_server.uri)
    parent_id, _ = write_study(client, "page-no-audio", "grid-no-audio")
    done = run_main(capsys, "report", "--study", "grid-no-audio")
    assert done.returncode == 0, done.stderr
    local = client.download_artifacts(parent_id, tracking.STUDY_PAGE_ARTIFACT, str(tmp_path))
    page = parse(Path(local).read_text(encoding="utf-8"))
    text = " ".join(page.text)
    assert page.players == []
    for who in ("open-unmix5 (best)", "trial-6 (worst)"):  # the best and the worst SDR of study_runs
        assert f"{who}: its runs logged no listening excerpt" in text
    assert {alt for alt, _ in page.images} == {"loss curves", "scores", "loss vs time", "sdr vs rtf"}
