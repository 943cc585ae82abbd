"""The study page: `report/index.html` of a study's parent run (`index.html` in `report --out`).

One self-contained HTML file: players for the best config's estimate against the worst's (or a
chosen baseline's) on the same excerpt, with that excerpt's mixture and reference, so an A/B needs
no download; then the report's tables, its plots and its findings.

The MLflow UI shows an HTML artifact in a sandboxed iframe loaded from a blob: URL, against which
relative links resolve to nothing; so everything is embedded as data: URIs: the PNGs as they are,
the audio re-encoded as Ogg Vorbis (about 200 kbit/s, a quarter of the FLAC's size; the lossless
files stay in each run's audio/). A page of four 15-second players is about 3 MB.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from umx_tune import tracking
from umx_tune.errors import ReportError
from umx_tune.evaluation.listen import Excerpt
from umx_tune.report import figures
from umx_tune.report.note import study_note
from umx_tune.report.runs import Report, RunRow, check_protocols, config_runs, load_children, reading_client
from umx_tune.report.tables import configs, html_document, html_tables
from umx_tune.report.uncertainty import SCORES_RANKING, Config
from umx_tune.tracking.runs import artifact_tempdir

PAGE_FILE = Path(tracking.STUDY_PAGE_ARTIFACT).name
# libsndfile's Vorbis setting, from 0 (best quality) to 1 (smallest); 0.4 is about 200 kbit/s stereo
VORBIS_COMPRESSION = 0.4
PAGE_STYLE = (
    "figure{margin:.5em 0 1em}audio{width:40em;max-width:100%}img{max-width:100%}"
    ".spectrograms{display:grid;grid-template-columns:repeat(auto-fit,minmax(30em,1fr));gap:1em}"
)


@dataclass(frozen=True)
class Pair:
    """The configs the page plays against each other: the best by SDR, and the worst (or the
    baseline asked for); other is None when there is no second config to play."""

    best: Config
    other: Config | None
    role: str  # what other is: "worst" or "baseline"


def choose_pair(report: Report, baseline: str | None = None) -> Pair | None:
    """The best config by SDR and the worst, or baseline (a grid entry, run name or run id);
    None when no config has an SDR. ReportError for a baseline that names no config or the best."""
    shown = configs(report)
    chosen = None
    if baseline is not None:
        ids = {r.run_id for r in config_runs(report, baseline)}
        chosen = next(c for c in shown if ids & {r.run_id for r in c.runs})
    scored = [c for c in shown if c.row.metric(SCORES_RANKING) is not None]
    if not scored:
        return None
    best = max(scored, key=lambda c: c.row.metrics[SCORES_RANKING])
    if chosen is best:
        raise ReportError(f"baseline {baseline!r} is the best config by {SCORES_RANKING}; choose another")
    if chosen is not None:
        return Pair(best, chosen, "baseline")
    worst = min(scored, key=lambda c: c.row.metrics[SCORES_RANKING])
    return Pair(best, worst if worst is not best else None, "worst")


def _listened(config: Config) -> RunRow | None:
    """The config's first run (replicate 0 first) that logged a listening excerpt."""
    return next((r for r in config.runs if r.excerpt is not None), None)


def _data_uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _vorbis(path: Path) -> bytes:
    """An audio file re-encoded as Ogg Vorbis (the players' format)."""
    audio, rate = sf.read(path, dtype="float32", always_2d=True)  # (nb_samples, nb_channels)
    buffer = io.BytesIO()
    sf.write(buffer, audio, rate, format="OGG", subtype="VORBIS", compression_level=VORBIS_COMPRESSION)
    return buffer.getvalue()


def _player(part: str, label: str, ogg: bytes) -> str:
    return (
        f'<figure class="player" data-part="{html.escape(part)}"><figcaption>{html.escape(label)}'
        f'</figcaption><audio controls preload="auto" src="{_data_uri("audio/ogg", ogg)}"></audio></figure>'
    )


def _image(alt: str, png: bytes) -> str:
    alt = html.escape(alt)
    source = _data_uri("image/png", png)
    return f'<figure><img alt="{alt}" src="{source}"><figcaption>{alt}</figcaption></figure>'


def _sdr(config: Config) -> str:
    value = config.row.metric(SCORES_RANKING)
    return f"{SCORES_RANKING} {value:.3f} dB" if value is not None else f"no {SCORES_RANKING}"


class _Fetcher:
    """Downloads runs' artifacts into a folder, one subfolder per run (their names repeat)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.client = reading_client()

    def __call__(self, run: RunRow, artifact: str) -> Path:
        return self.client.download_artifact(run.run_id, artifact, self.folder / run.run_id)


def _excerpt_players(pair: Pair, fetch: _Fetcher) -> tuple[list[str], list[str]]:
    """The players (mixture and reference of the best's excerpt, then each config's estimate, one
    after the other for an A/B) and each config's spectrograms; a config whose runs logged no
    excerpt is said to have none."""
    played = [("best", pair.best)] + ([(pair.role, pair.other)] if pair.other is not None else [])
    players: list[str] = []
    images: list[str] = []
    first = _listened(pair.best)
    if first is not None and first.excerpt is not None:
        target = first.excerpt.target
        for part, estimate, label in (
            (tracking.EXCERPT_MIXTURE, "", "mixture"),
            (tracking.EXCERPT_REFERENCE, target, f"reference {target}"),
        ):
            artifact = tracking.excerpt_artifact(part, estimate)
            players.append(_player(artifact, label, _vorbis(fetch(first, artifact))))
    for role, config in played:
        run = _listened(config)
        if run is None or run.excerpt is None:
            players.append(
                f"<p>{html.escape(config.name)} ({role}): its runs logged no listening excerpt "
                "(run with --no-audio, or before umx-tune logged audio).</p>"
            )
            continue
        target = run.excerpt.target
        artifact = tracking.excerpt_artifact(tracking.EXCERPT_ESTIMATE, target)
        label = f"{role}: {config.name}, {target} estimate ({_sdr(config)}), run {run.run_id}"
        players.append(_player(artifact, label, _vorbis(fetch(run, artifact))))
        spectrograms = fetch(run, tracking.SPECTROGRAMS_ARTIFACT).read_bytes()
        images.append(_image(f"{role}: {config.name}, reference and estimate spectrograms", spectrograms))
    return players, images


def _excerpts_text(pair: Pair) -> str:
    """What is played: the excerpt, and whether both configs' runs logged the same one."""
    runs = [r for c in (pair.best, pair.other) if c is not None and (r := _listened(c)) is not None]
    excerpts: list[Excerpt] = [r.excerpt for r in runs if r.excerpt is not None]
    against = f" against the {pair.role}, {pair.other.name} ({_sdr(pair.other)})" if pair.other else ""
    text = f"The best config by {SCORES_RANKING}, {pair.best.name} ({_sdr(pair.best)}){against}."
    if excerpts:
        text += f" Excerpt: {excerpts[0].describe()}."
    if len(excerpts) == 2 and not excerpts[0].same_audio(excerpts[1]):
        text += f" The other run's excerpt differs ({excerpts[1].describe()}): its estimate is of that one."
    text += " Players: Ogg Vorbis copies of the runs' lossless FLAC files (their audio/ artifacts)."
    return f"<p>{html.escape(text)}</p>"


def listening_html(pair: Pair | None, folder: Path) -> str:
    """The page's listening section (its audio downloaded into folder)."""
    if pair is None:
        return "<h2>Listen</h2>\n<p>No config has an SDR yet: nothing to compare.</p>\n"
    players, images = _excerpt_players(pair, _Fetcher(folder))
    spectrograms = '<div class="spectrograms">' + "".join(images) + "</div>"
    return "\n".join(["<h2>Listen</h2>", _excerpts_text(pair), *players, spectrograms]) + "\n"


def page_html(report: Report, protocol: str | None, plots: list[Path], listening: str) -> str:
    """The whole page: listening section, tables (with the protocol and findings), plots."""
    images = "\n".join(_image(path.stem.replace("_", " "), path.read_bytes()) for path in plots)
    tables = html_tables(report, protocol, configs(report))
    body = f"{listening}<h2>Results</h2>\n{tables}<h2>Plots</h2>\n{images}\n"
    return html_document(f"umx-tune report: {report.title}", body, PAGE_STYLE)


def write_report(report: Report, folder: Path, protocol: str | None, pair: Pair | None) -> list[Path]:
    """The plots and the page (last) in folder; their paths. The audio is fetched first, so that a
    refused download leaves nothing written."""
    with artifact_tempdir() as tmp:
        listening = listening_html(pair, Path(tmp))
    plots = figures.write_plots(report, folder)
    page = folder / PAGE_FILE
    page.write_text(page_html(report, protocol, plots, listening), encoding="utf-8")
    return [*plots, page]


def log_report(report: Report, run_id: str, protocol: str | None, pair: Pair | None) -> list[str]:
    """The plots and the page as artifacts of run_id (under report/); their artifact paths."""
    client = reading_client()
    with artifact_tempdir() as tmp:
        written = write_report(report, Path(tmp), protocol, pair)
        client.log_artifacts(run_id, Path(tmp), figures.PLOTS_ARTIFACT_PATH)
    return [f"{figures.PLOTS_ARTIFACT_PATH}/{path.name}" for path in written]


def publish_study(parent_run_id: str) -> str:
    """What a study's parent run shows when the study ends: the page and the plots (report/),
    logged here, and the description (`mlflow.note.content`) listing them, returned for the
    caller to log with the study's summary. The optimize command calls this; `umx-tune report
    --study` does the same with its own options."""
    report = load_children(parent_run_id)
    if not report.rows:
        return study_note(report)
    protocol = check_protocols(report.rows, allow_mixed=True)
    return study_note(report, log_report(report, parent_run_id, protocol, choose_pair(report)))
