"""The report's plots of a study's runs, written to a folder (report.page logs them with the page)."""

from __future__ import annotations

from pathlib import Path

from umx_tune import tracking
from umx_tune.report.runs import Report
from umx_tune.report.tables import configs, target_label
from umx_tune.report.uncertainty import Config

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
    shown = configs(report)
    metrics = tracking.SEPARATION_METRICS
    scores = {c.name: {m: c.row.metrics[m] for m in metrics if m in c.row.metrics} for c in shown}
    if any(scores.values()):
        scores_title = f"{title}: {target_label(report)} separation (BSSEval v4, 95% intervals)"
        bounds = {c.name: _bounds(c, {m: m for m in metrics}) for c in shown}
        written.append(plots.study_scores_png(scores, metrics, folder / "scores.png", scores_title, bounds))
    timed = {
        c.name: (seconds, loss)
        for c in shown
        if (seconds := c.row.train_seconds) is not None
        and (loss := c.row.metric(tracking.VALID_LOSS)) is not None
    }
    if timed:
        names = {"seconds": tracking.TRAIN_SECONDS, "loss": tracking.VALID_LOSS}
        spans = {c.name: _bounds(c, names) for c in shown}
        written.append(
            plots.loss_vs_time_png(
                timed, folder / "loss_vs_time.png", f"{title}: final loss against training time", spans
            )
        )
    speed = {
        r.name: (rtf, sdr, bool(r.params.get("unidirectional", False)))
        for r in (c.row for c in shown)
        if (rtf := r.rtf) is not None and (sdr := r.metric("SDR")) is not None
    }
    if speed:
        written.append(
            plots.sdr_vs_rtf_png(speed, folder / "sdr_vs_rtf.png", f"{title}: SDR against real-time factor")
        )
    return written


def _bounds(config: Config, names: dict[str, str]) -> dict[str, tuple[float, float]]:
    """{label: (low, high)} of the config's intervals of the metrics names maps labels to."""
    found = {}
    for label, metric in names.items():
        interval = config.intervals.get(metric)
        if interval is not None and interval.low is not None and interval.high is not None:
            found[label] = (interval.low, interval.high)
    return found
