"""The study's plots (Optuna's matplotlib figures), written as PNGs for the parent run."""

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

log = logging.getLogger(__name__)


def _plots(study: optuna.Study) -> dict[str, Callable[[], Any]]:
    # several objectives: plot the first; Optuna's history plot wants a target then
    target = (lambda t: t.values[0]) if len(study.directions) > 1 else None
    name = study.metric_names[0] if study.metric_names else "objective value"
    return {
        "optimization_history": lambda: ovm.plot_optimization_history(study, target=target, target_name=name),
        "intermediate_values": lambda: ovm.plot_intermediate_values(study),
        "param_importances": lambda: ovm.plot_param_importances(study, target=target, target_name=name),
        "parallel_coordinate": lambda: ovm.plot_parallel_coordinate(study, target=target, target_name=name),
    }


def write_study_plots(study: optuna.Study, folder: Path) -> list[Path]:
    """One PNG per plot that the study's trials allow (importances need two finished trials that
    differ in some parameter); plots that cannot be drawn are skipped, not fatal."""

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
