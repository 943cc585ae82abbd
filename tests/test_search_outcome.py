"""A tiny search end to end (real server, real storage, real training): the progress `optimize`
prints and what --quiet leaves of it, the system metrics of every trial, the parameter importances
the parent run logs when the study ends, and `report --study` printing them."""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import optuna
import pytest
from conftest import TINY, MainResult, MlflowServer, run_main
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator
from optuna.trial import TrialState
from test_report import markdown_tables

from umx_tune import tracking
from umx_tune.cli.options import option_name

Capture = pytest.CaptureFixture[str]
STUDY = "outcome"
EXPERIMENT = "search-outcome"
SPACE = (
    "params:\n"
    "  lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
    "  hidden_size: {type: int, low: 8, high: 24, step: 8}\n"
)
BASE = [arg for name, value in {**TINY, "epochs": 1}.items() for arg in (option_name(name), str(value))]
HMS = r"\d+:\d\d:\d\d"


@dataclass
class Search:
    done: MainResult
    storage: str
    parent: Run
    trials: list[Run]


def optimize(tmp: Path, study: str, *extra: str) -> MainResult:
    """`umx-tune optimize` of a 3-trial random search (1 epoch each) over SPACE, in this process."""
    space = tmp / "space.yaml"
    space.write_text(SPACE)
    args = ["optimize", "--study-name", study, "--storage", f"sqlite:///{tmp / 'optuna.db'}"]
    args += ["--search", str(space), "--sampler", "random", "--sampler-seed", "0", "--pruner", "none"]
    args += ["--experiment", EXPERIMENT, "--checkpoint-dir", str(tmp / "checkpoints"), "--device", "cpu"]
    return run_main(None, *args, *BASE, *extra)


@pytest.fixture(scope="module")
def search(mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Search]:
    """The study, once, with its progress output (MLflow's own variable: system samples every 0.5 s)."""
    tmp = tmp_path_factory.mktemp("search-outcome")
    mlflow.set_tracking_uri(mlflow_server.uri)
    os.environ["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] = "0.5"
    try:
        done = optimize(tmp, STUDY, "--n-trials", "3")
        assert done.returncode == 0, done.stderr[-3000:]
        client = MlflowClient()
        experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
        runs = client.search_runs([experiment], tracking.tag_equals(tracking.TAG_STUDY, STUDY))
        (parent,) = [r for r in runs if tracking.TAG_PARENT_RUN not in r.data.tags]
        trials = [r for r in runs if tracking.TAG_PARENT_RUN in r.data.tags]
        yield Search(done, f"sqlite:///{tmp / 'optuna.db'}", parent, trials)
    finally:
        os.environ.pop("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", None)
        mlflow.set_tracking_uri(None)


def test_each_finished_trial_prints_its_line_and_the_study_progress(search: Search) -> None:
    study = optuna.load_study(study_name=STUDY, storage=search.storage)
    trials = sorted(study.trials, key=lambda t: t.datetime_complete)  # type: ignore[arg-type,return-value]
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    lines = [line for line in search.done.stderr.splitlines() if line.startswith(f"{STUDY}: ")]
    finished = [line for line in lines if "trials finished" in line]
    assert len(finished) == 3, lines
    best = float("inf")
    for count, trial in enumerate(trials, start=1):
        # the trial's line, then the study's, in the order the trials finished
        at = lines.index(f"{STUDY}: trial {trial.number} starts")
        own = lines[at + 1]
        assert re.fullmatch(rf"{STUDY}: trial {trial.number} COMPLETE: valid_loss \S+ in {HMS}", own), own
        assert float(own.split("valid_loss ")[1].split(" in ")[0]) == pytest.approx(trial.value, rel=1e-3)
        best = min(best, trial.value)  # type: ignore[type-var]
        leader = min(trials[:count], key=lambda t: t.value)  # type: ignore[arg-type,return-value]
        eta = "done" if count == 3 else f"ETA {HMS}"
        best_so_far = rf"best valid_loss (\S+) \(trial {leader.number}\)"
        match = re.fullmatch(rf"{STUDY}: {count}/3 trials finished, {best_so_far}, {eta}", lines[at + 2])
        assert match, lines[at + 2]
        assert float(match.group(1)) == pytest.approx(best, rel=1e-3)


def test_quiet_prints_the_final_summary_only(tracking_uri: str, tmp_path: Path) -> None:
    done = optimize(tmp_path, "outcome-quiet", "--n-trials", "1", "--quiet", "--no-system-metrics")
    assert done.returncode == 0, done.stderr[-3000:]
    # no line per trial, no progress line, no MLflow link per run
    assert not [line for line in done.stderr.splitlines() if line.startswith("outcome-quiet")], done.stderr
    assert done.stdout.startswith("study outcome-quiet (search "), done.stdout
    assert "this worker ran trials: 0:COMPLETE" in done.stdout


def test_every_trial_run_logs_system_metrics(search: Search, tracking_uri: str) -> None:
    assert len(search.trials) == 3
    for run in search.trials:
        assert f"{tracking.SYSTEM_METRICS_PREFIX}cpu_utilization_percentage" in run.data.metrics, run.info
    assert not [k for k in search.parent.data.metrics if k.startswith(tracking.SYSTEM_METRICS_PREFIX)]


def _importances(search: Search) -> list[dict[str, str]]:
    """The parent run's importances table, read back from MLflow."""
    client = MlflowClient()
    folder = client.download_artifacts(search.parent.info.run_id, tracking.STUDY_ARTIFACT_DIR)
    text = (Path(folder) / Path(tracking.STUDY_IMPORTANCES_ARTIFACT).name).read_text()
    return list(csv.DictReader(io.StringIO(text)))


def test_the_parent_run_logs_importances_by_ped_anova_and_fanova(
    search: Search, tracking_uri: str, tmp_path: Path
) -> None:
    rows = _importances(search)
    assert {row["param"] for row in rows} == {"lr", "hidden_size"}
    study = optuna.load_study(study_name=STUDY, storage=search.storage)
    for column, evaluator in (("ped_anova", PedAnovaImportanceEvaluator()), ("fanova", None)):
        logged = {row["param"]: float(row[column]) for row in rows}
        assert sum(logged.values()) == pytest.approx(1.0, abs=1e-4)
        # the same numbers as Optuna's own evaluators on the stored study (fANOVA seeded as logged)
        evaluator = evaluator or FanovaImportanceEvaluator(seed=0)
        expected = optuna.importance.get_param_importances(study, evaluator=evaluator)
        assert logged == pytest.approx(expected, rel=1e-4)
    ped = [float(row["ped_anova"]) for row in rows]
    assert ped == sorted(ped, reverse=True)  # most important first
    plots = {a.path for a in MlflowClient().list_artifacts(search.parent.info.run_id, "plots")}
    plot = f"{tracking.PLOTS_ARTIFACT_DIR}/{tracking.IMPORTANCES_PLOT}"
    assert plot in plots
    png = MlflowClient().download_artifacts(search.parent.info.run_id, plot, str(tmp_path))
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_prints_the_importances(search: Search, tracking_uri: str, capsys: Capture) -> None:
    done = run_main(capsys, "report", "--study", STUDY, "--experiment", EXPERIMENT, "--no-plots")
    assert done.returncode == 0, done.stderr[-3000:]
    section = done.stdout.split("## Parameter importances for valid_loss\n", 1)
    assert len(section) == 2, done.stdout
    (table,) = markdown_tables(section[1])
    logged = {row["param"]: row for row in _importances(search)}
    assert set(table) == set(logged)
    for param, row in table.items():
        assert float(row["PED-ANOVA"]) == pytest.approx(float(logged[param]["ped_anova"]), abs=5e-4)
        assert float(row["fANOVA"]) == pytest.approx(float(logged[param]["fanova"]), abs=5e-4)
