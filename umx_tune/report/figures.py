"""The report's plots of a study's runs, written to a folder or logged to the study's parent run."""

from __future__ import annotations

from pathlib import Path

from umx_tune import tracking
from umx_tune.report.runs import Report, reading_client
from umx_tune.report.tables import target_label
from umx_tune.tracking.runs import artifact_tempdir

PLOTS_ARTIFACT_PATH = tracking.REPORT_ARTIFACT_DIR


def write_plots(report: Report, folder: Path) -> list[Path]:
    """The study's PNGs in folder; a plot no run has data for is left out."""
    from umx_tune.report import plots  # matplotlib only when plots are asked for

    folder.mkdir(parents=True, exist_ok=True)
    rows, title = report.rows, report.title
    written: list[Path] = []
    curves = {
        r.name: (r.curves.get(tracking.TRAIN_LOSS, []), r.curves.get(tracking.VALID_LOSS, []))
        for r in rows
        if r.curves.get(tracking.TRAIN_LOSS) or r.curves.get(tracking.VALID_LOSS)
    }
    if curves:
        written.append(
            plots.study_loss_curves_png(curves, folder / "loss_curves.png", f"{title}: loss curves")
        )
    metrics = tracking.SEPARATION_METRICS
    scores = {r.name: {m: r.metrics[m] for m in metrics if m in r.metrics} for r in rows}
    if any(scores.values()):
        scores_title = f"{title}: {target_label(report)} separation (BSSEval v4)"
        written.append(plots.study_scores_png(scores, metrics, folder / "scores.png", scores_title))
    timed = {
        r.name: (seconds, loss)
        for r in rows
        if (seconds := r.train_seconds) is not None and (loss := r.metric(tracking.VALID_LOSS)) is not None
    }
    if timed:
        written.append(
            plots.loss_vs_time_png(
                timed, folder / "loss_vs_time.png", f"{title}: final loss against training time"
            )
        )
    speed = {
        r.name: (rtf, sdr, bool(r.params.get("unidirectional", False)))
        for r in rows
        if (rtf := r.metric(tracking.REALTIME_FACTOR)) is not None and (sdr := r.metric("SDR")) is not None
    }
    if speed:
        written.append(
            plots.sdr_vs_rtf_png(speed, folder / "sdr_vs_rtf.png", f"{title}: SDR against real-time factor")
        )
    return written


def log_plots(report: Report, run_id: str) -> list[str]:
    """Write the plots and log them as artifacts of run_id (under report/); their artifact paths."""
    client = reading_client()
    with artifact_tempdir() as tmp:
        written = write_plots(report, Path(tmp))
        if written:
            client.log_artifacts(run_id, Path(tmp), PLOTS_ARTIFACT_PATH)
    return [f"{PLOTS_ARTIFACT_PATH}/{path.name}" for path in written]
