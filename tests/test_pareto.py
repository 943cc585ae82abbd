"""Two-objective search: SDR (maximize) and real-time factor (minimize), Pareto front tagged in MLflow."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import mlflow
import optuna
import pytest
from conftest import TINY, run_main
from mlflow.tracking import MlflowClient
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from umx_tune import tracking
from umx_tune.cli.options import option_name
from umx_tune.search import mirror, objectives


def fake_result(sdr: float, rtf: float | None) -> SimpleNamespace:
    """What the objective reads off an ExperimentResult: the target's scores and the speed probe."""
    return SimpleNamespace(
        config=SimpleNamespace(target="vocals"),
        evaluation=SimpleNamespace(scores={"vocals": {"SDR": sdr}}),
        speed=None if rtf is None else SimpleNamespace(rtf_compute=rtf),
    )


def test_sdr_rtf_objective_maximizes_sdr_and_minimizes_rtf() -> None:
    objective = objectives.get("sdr_rtf")
    assert objective.multi and objective.directions == ("maximize", "minimize")
    assert objective.intermediate is None  # Optuna does not prune multi-objective studies
    assert objective.values(fake_result(3.5, 0.2)) == (3.5, 0.2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="real-time factor"):
        objective.values(fake_result(3.5, None))  # type: ignore[arg-type]


def test_pareto_front_is_tagged_on_the_trial_runs_and_the_parent(tracking_uri: str) -> None:
    mlflow.set_experiment("test-pareto-unit")
    client = MlflowClient()
    parent = mlflow.start_run(run_name="study").info.run_id
    mlflow.end_run()
    study = optuna.create_study(directions=["maximize", "minimize"])
    # (SDR, rtf): trial 2 is dominated by trial 1 (lower SDR and slower); 0, 1 and 3 trade off
    points = [(1.0, 0.1), (3.0, 0.3), (2.0, 0.5), (4.0, 0.9)]
    runs = []
    for number, values in enumerate(points):
        runs.append(client.create_run(client.get_run(parent).info.experiment_id).info.run_id)
        study.add_trial(
            optuna.trial.create_trial(
                params={"x": float(number)},
                distributions={"x": FloatDistribution(0, 10)},
                values=list(values),
                user_attrs={mirror.RUN_ID_ATTR: runs[-1]},
                state=TrialState.COMPLETE,
            )
        )
    front = mirror.record_pareto_front(parent, study)
    assert [t.number for t in front] == [0, 1, 3]
    tags = [client.get_run(r).data.tags.get(tracking.TAG_PARETO) for r in runs]
    assert tags == ["true", "true", "false", "true"]
    assert client.get_run(parent).data.tags[tracking.TAG_PARETO_TRIALS] == "0,1,3"


@pytest.mark.slow
def test_optimize_searches_sdr_and_rtf_and_reports_the_front(
    tracking_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(
        "params:\n"
        "  hidden_size: {type: categorical, choices: [8, 32]}\n"
        "  unidirectional: {type: categorical, choices: [false, true]}\n"
    )
    base = [arg for name, value in {**TINY, "epochs": 1}.items() for arg in (option_name(name), str(value))]
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    args = ["--study-name", "pareto", "--storage", storage, "--search", str(space), "--n-trials", "3"]
    args += ["--objective", "sdr_rtf", "--sampler", "random", "--sampler-seed", "0", "--evaluator", "fast"]
    args += ["--checkpoint-dir", str(tmp_path / "checkpoints")]
    done = run_main(capsys, "optimize", *args, *base, "--device", "cpu", "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    study = optuna.load_study(study_name="pareto", storage=storage)
    front = {t.number for t in study.best_trials}
    assert front and "Pareto front (SDR, rtf_compute)" in done.stdout
    runs = mlflow.search_runs(
        experiment_names=["umx-tune"],
        filter_string=f"tags.`{tracking.TAG_STUDY}` = 'pareto'",
        output_format="list",
    )
    trial_runs = {
        int(r.data.tags[tracking.TAG_TRIAL_NUMBER]): r
        for r in runs
        if tracking.TAG_TRIAL_NUMBER in r.data.tags
    }
    for trial in study.get_trials(states=(TrialState.COMPLETE,)):
        run = trial_runs[trial.number]
        assert run.data.tags[tracking.TAG_PARETO] == str(trial.number in front).lower()
        # the values Optuna got are the run's own SDR and rtf
        assert trial.values == pytest.approx(
            [run.data.metrics["SDR"], run.data.metrics[tracking.REALTIME_FACTOR_COMPUTE]]
        )
