"""The study's plots, written as PNGs for the parent run: Optuna's matplotlib figures, and the
parameter importances of both evaluators side by side (search/importance.py)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.visualization import matplotlib as ovm

import umx_tune.report.plots  # noqa: F401  (selects matplotlib's headless backend first)
from umx_tune.search.importance import EVALUATORS, Importances
from umx_tune.tracking import IMPORTANCES_PLOT

log = logging.getLogger(__name__)


def _plots(study: optuna.Study) -> dict[str, Callable[[], Any]]:
    # several objectives: plot the first; Optuna's history plot wants a target then
    target = (lambda t: t.values[0]) if len(study.directions) > 1 else None
    name = study.metric_names[0] if study.metric_names else "objective value"
    return {
        "optimization_history": lambda: ovm.plot_optimization_history(study, target=target, target_name=name),
        "intermediate_values": lambda: ovm.plot_intermediate_values(study),
        "parallel_coordinate": lambda: ovm.plot_parallel_coordinate(study, target=target, target_name=name),
    }


def write_study_plots(study: optuna.Study, folder: Path, importances: Importances) -> list[Path]:
    """One PNG per plot that the study's trials allow, and the importances' (where there are any);
    plots that cannot be drawn are skipped, not fatal."""
    written = []
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # "no complete trials" is not news here
    try:
        for name, draw in _plots(study).items():
            path = _draw(name, draw, folder)
            if path is not None:
                written.append(path)
    finally:
        optuna.logging.set_verbosity(verbosity)
    if importances:
        complete = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
        name = study.metric_names[0] if study.metric_names else "the objective"
        title = f"parameter importances for {name} ({complete} complete trials)"
        written.append(param_importances_png(importances, folder / IMPORTANCES_PLOT, title))
    return written


def _draw(name: str, draw: Callable[[], Any], folder: Path) -> Path | None:
    import matplotlib.pyplot as plt

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            warnings.simplefilter("ignore", UserWarning)
            axes = draw()
    except (ValueError, RuntimeError, ZeroDivisionError) as err:
        log.info("study plot %s skipped: %s", name, err)
        return None
    figure = getattr(axes, "figure", None) or axes.flat[0].figure  # one Axes or an array of them
    if not figure.axes or not any(ax.has_data() for ax in figure.axes):
        plt.close(figure)
        return None  # nothing to show yet (no finished trials)
    path = folder / f"{name}.png"
    figure.set_size_inches(8, 5)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def param_importances_png(importances: Importances, path: Path, title: str) -> Path:
    """Horizontal bars per param (most important on top), one bar per evaluator."""
    import matplotlib.pyplot as plt

    columns = [c for c in EVALUATORS if c in importances]
    first = importances[columns[0]]
    params = sorted(first, key=lambda p: first[p])  # barh draws bottom-up
    height = 0.8 / len(columns)
    fig, ax = plt.subplots(figsize=(8, 1.5 + 0.5 * len(params) * len(columns)), dpi=100)
    for index, column in enumerate(columns):
        # the first evaluator's bar on top, as in the legend
        offsets = [i + ((len(columns) - 1) / 2 - index) * height for i in range(len(params))]
        ax.barh(offsets, [importances[column][p] for p in params], height, label=EVALUATORS[column][0])
    ax.set_yticks(range(len(params)), params)
    ax.set_xlabel("importance (each evaluator's sum is 1)")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
