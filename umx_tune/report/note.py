"""The study parent run's description in the MLflow UI, and the UI link that lines its runs up."""

from __future__ import annotations

import urllib.parse
from collections import Counter
from collections.abc import Sequence

from umx_tune import tracking
from umx_tune.report import findings
from umx_tune.report.runs import Report, ReportError, reading_client
from umx_tune.report.tables import (
    SCORE_COLUMNS,
    TRAINING_COLUMNS,
    configs,
    legend,
    markdown_table,
    target_label,
)
from umx_tune.tracking.server import tracking_uri


def ui_url(report: Report) -> str | None:
    """Where the MLflow UI shows the study's runs side by side (None without a study).

    The UI opens in its model-training mode and filtered to the study's runs; a local sqlite store
    is served by `mlflow ui` on port 5000.
    """
    if not (report.study and report.experiment_id):
        return None
    uri = tracking_uri()
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    query = urllib.parse.urlencode(
        {
            "workflowType": "machine_learning",
            "searchFilter": tracking.tag_equals(tracking.TAG_STUDY, report.study),
        },
        quote_via=urllib.parse.quote,
    )
    return f"{base}/#/experiments/{report.experiment_id}/runs?{query}"


def _summary(report: Report) -> str:
    """One line: how many trials in which state, and the best SDR."""
    states = Counter(row.state for row in report.rows)
    line = f"**{len(report.rows)} trials** (" + ", ".join(f"{n} {s.lower()}" for s, n in states.items()) + ")"
    scored = [row for row in report.rows if row.metric("SDR") is not None]
    if scored:
        best = max(scored, key=lambda row: row.metrics["SDR"])
        line += f"; best SDR {best.metrics['SDR']:.3f} dB: **{best.name}**"
    return line + "."


def note(report: Report, plot_paths: Sequence[str] = ()) -> str:
    """The parent run's description: a summary line, the scores and the training table (each value
    with its interval), then the findings on the study's questions, and where the page and the
    plots are (plot_paths: the report's artifacts).

    Scores come first because the UI folds a long description after its first lines. Tables keep
    as many configs as MLflow's tag limit allows; the findings are left out only when they alone
    would not fit.
    """
    command = f"umx-tune report --study '{report.study}'" if report.study else "umx-tune report"
    shown = configs(report)
    total = len(shown)
    footer = f"\nFull report: `{command}`.\n"
    if tracking.STUDY_PAGE_ARTIFACT in plot_paths:
        footer += f"Study page with players for an A/B (Artifacts): `{tracking.STUDY_PAGE_ARTIFACT}`.\n"
    plots = [p for p in plot_paths if p != tracking.STUDY_PAGE_ARTIFACT]
    if plots:
        footer += "Plots (artifacts of this run): " + ", ".join(f"`{p}`" for p in plots) + ".\n"
    answers = findings.markdown(findings.find(shown)).replace("## Findings", "#### findings")

    def text(keep: int, with_findings: bool) -> str:
        parts = [
            _summary(report),
            f"#### separation of {target_label(report)} (BSSEval v4, dB)",
            markdown_table(report, SCORE_COLUMNS, shown[:keep]),
            "#### training",
            markdown_table(report, TRAINING_COLUMNS, shown[:keep]),
            legend(shown) + ("" if keep == total else f" First {keep} of {total} configs shown."),
        ]
        if with_findings:
            parts.append(answers)
        return "\n\n".join(parts) + "\n" + footer

    for with_findings in (True, False):
        # the largest number of configs that fits, found by bisection (a search study has hundreds)
        low, high = 0, total
        while low < high:
            middle = (low + high + 1) // 2
            fits = len(text(middle, with_findings)) <= tracking.MAX_TAG_LENGTH
            low, high = (middle, high) if fits else (low, middle - 1)
        if low:
            return text(low, with_findings)
    return _summary(report) + "\n" + footer


def study_note(report: Report, plot_paths: Sequence[str] = ()) -> str:
    """note(report), or what a study without trial runs says."""
    return note(report, plot_paths) if report.rows else "No trial runs yet.\n"


def set_note(report: Report, plot_paths: Sequence[str] = ()) -> str:
    """Write study_note(report) to the report's parent run; returns the text."""
    if report.parent_run_id is None:
        raise ReportError(f"{report.title} has no parent run to describe")
    text = study_note(report, plot_paths)
    reading_client().set_tag(report.parent_run_id, tracking.TAG_NOTE, text)
    return text
