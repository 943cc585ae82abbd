"""`umx-tune optimize --grid … --replicates N`: every grid entry with N training seeds, exactly once each."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import optuna
import pytest
from conftest import TINY, assert_one_line_error, run_main
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from umx_tune import tracking
from umx_tune.cli.options import option_name

Capture = pytest.CaptureFixture[str]
BASE_ARGS = [arg for name, value in TINY.items() for arg in (option_name(name), str(value))]
BASE_ARGS += ["--device", "cpu", "--quiet"]


def optimize_args(study: str, storage: str, *args: str) -> list[str]:
    return ["optimize", "--study-name", study, "--storage", storage, *args]


def write_grid(path: Path, entries: dict[str, dict[str, int]]) -> str:
    path.write_text("entries:\n" + "".join(f"  {name}: {values}\n" for name, values in entries.items()))
    return str(path)


def trial_runs(study: str) -> list[Run]:
    """The study's nested trial runs, from MLflow alone."""
    client = MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, filter_string=f"tags.`{tracking.TAG_STUDY}` = '{study}'")
    return [r for r in runs if tracking.TAG_PARENT_RUN in r.data.tags]


@pytest.fixture(scope="module")
def grid_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("replicates")
    return write_grid(folder / "two.yaml", {"small": {"hidden_size": 8}, "wide": {"hidden_size": 12}})


def test_each_entry_runs_once_per_seed(
    tracking_uri: str, grid_file: str, tmp_path: Path, capsys: Capture
) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    args = optimize_args("replicated", storage, "--grid", grid_file, "--replicates", "2", *BASE_ARGS)
    done = run_main(capsys, *args, "--epochs", "1")
    assert done.returncode == 0, done.stderr
    children = trial_runs("replicated")
    runs = {
        (r.data.tags[tracking.TAG_GRID_ENTRY], int(r.data.tags[tracking.TAG_REPLICATE])): r for r in children
    }
    assert Counter(
        (r.data.tags[tracking.TAG_GRID_ENTRY], r.data.tags[tracking.TAG_REPLICATE]) for r in children
    ) == {(e, str(k)): 1 for e in ("small", "wide") for k in (0, 1)}
    for (entry, replicate), run in runs.items():
        assert run.info.run_name == entry and run.info.status == "FINISHED"
        # replicate r trains with the base seed + r
        assert run.data.params["seed"] == str(42 + replicate)
        assert run.data.params["hidden_size"] == {"small": "8", "wide": "12"}[entry]
    study = optuna.load_study(study_name="replicated", storage=storage)
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE"] * 4

    # a resume runs nothing again; the same study with another replicate count is refused
    again = run_main(capsys, "optimize", "--study-name", "replicated", "--storage", storage, "--quiet")
    assert again.returncode == 0, again.stderr
    assert len(trial_runs("replicated")) == 4
    other = run_main(capsys, *optimize_args("replicated", storage, "--replicates", "3", "--quiet"))
    assert_one_line_error(other, "runs 2 replicates per entry, not 3")
    check_report_and_compare(capsys, runs)


def check_report_and_compare(capsys: Capture, runs: dict[tuple[str, int], Run]) -> None:
    """`report` and `compare` of the replicated study: means over seeds with intervals, findings."""
    done = run_main(capsys, "report", "--study", "replicated", "--format", "json", "--no-plots")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["protocol"].startswith("evaluator=fast bsseval=v4 window=44100 hop=44100 niter=1")
    configs = {r["name"]: r for r in document["runs"]}
    assert set(configs) == {"small", "wide"}
    for name, config in configs.items():
        sdrs = [float(runs[(name, k)].data.metrics["SDR"]) for k in (0, 1)]
        assert config["replicates"] == 2 and config["SDR_unit"] == "seeds" and config["SDR_n"] == 2
        assert config["SDR"] == pytest.approx(sum(sdrs) / 2)
        assert config["SDR_low"] <= config["SDR"] <= config["SDR_high"]
        assert min(sdrs) <= config["SDR_low"] and config["SDR_high"] <= max(sdrs)
    assert {c["mark_valid_loss"] for c in configs.values()} <= {"best", "not significantly worse", "worse"}
    assert "best" in {c["mark_SDR"] for c in configs.values()}
    markdown = run_main(capsys, "report", "--study", "replicated", "--no-plots").stdout
    assert "## Findings" in markdown and "- hidden_size 8 → 12 (small → wide): valid_loss" in markdown
    assert "batch_size: every config has the same value" in markdown
    assert "unidirectional: every config has the same value" in markdown

    compared = run_main(capsys, "compare", "--study", "replicated", "wide", "small", "--json")
    assert compared.returncode == 0, compared.stderr
    result = json.loads(compared.stdout)
    assert result["unit"] == "seeds x tracks" and result["pairs"] >= 2
    sdr = result["metrics"]["SDR"]
    assert sdr["n"] == result["pairs"] and 0.0 <= sdr["p_value"] <= 1.0
    assert (
        sdr["mean_difference"]["low"] <= sdr["mean_difference"]["estimate"] <= sdr["mean_difference"]["high"]
    )
    same = run_main(capsys, "compare", "--study", "replicated", "small", "small")
    assert same.returncode == 2 and "A and B are both 'small'" in same.stderr
    unknown = run_main(capsys, "compare", "--study", "replicated", "small", "huge")
    assert unknown.returncode == 2 and "no grid entry or run is named 'huge'" in unknown.stderr


def test_search_confirms_its_best_config_with_more_seeds(
    tracking_uri: str, tmp_path: Path, capsys: Capture
) -> None:
    """--confirm-best 1 --replicates 2: after 2 search trials, the best runs again with seed + 1."""
    space = tmp_path / "space.yaml"
    space.write_text("params:\n  hidden_size: {type: int, low: 8, high: 12, step: 4}\n")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    args = optimize_args(
        "confirmed", storage, "--search", str(space), "--n-trials", "2", "--sampler", "random"
    )
    done = run_main(capsys, *args, "--confirm-best", "1", "--replicates", "2", *BASE_ARGS, "--epochs", "1")
    assert done.returncode == 0, done.stderr
    assert "confirmed with 2 seeds" in done.stdout  # --quiet: the summary alone
    study = optuna.load_study(study_name="confirmed", storage=storage)
    trials = sorted(study.trials, key=lambda t: t.number)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    search, confirmation = trials[:2], trials[2]
    best = min(search, key=lambda t: t.values[0])
    assert confirmation.user_attrs["confirms"] == best.number and confirmation.params == best.params
    runs = {int(r.data.tags[tracking.TAG_TRIAL_NUMBER]): r for r in trial_runs("confirmed")}
    assert runs[confirmation.number].data.params["seed"] == "43"
    assert runs[confirmation.number].data.tags[tracking.TAG_CONFIRMS] == str(best.number)
    assert runs[confirmation.number].info.run_name == runs[best.number].info.run_name
    parent = MlflowClient().get_run(runs[best.number].data.tags[tracking.TAG_PARENT_RUN])
    assert parent.data.tags[tracking.TAG_CONFIRMED_BEST] == str(best.number)
    # the report takes the best config's two seeds as one config
    report = run_main(capsys, "report", "--study", "confirmed", "--format", "json", "--no-plots")
    configs = {r["run_id"]: r for r in json.loads(report.stdout)["runs"]}
    pair = ",".join(runs[n].info.run_id for n in (best.number, confirmation.number))
    assert configs[pair]["replicates"] == 2 and configs[pair]["valid_loss_unit"] == "seeds"


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (("--replicates", "0"), "0 is not in the range x>=1"),
        (("--replicates", "2", "--search", "default", "--n-trials", "2"), "needs --confirm-best K"),
        (("--confirm-best", "2"), "--confirm-best 2 is for --search"),
        (("--confirm-best", "1", "--replicates", "1", "--search", "default"), "--replicates of at least 2"),
    ],
)
def test_bad_replicates_are_one_line_errors(
    capsys: Capture, tmp_path: Path, grid_file: str, extra: tuple[str, ...], words: str
) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    grid = () if "--search" in extra else ("--grid", grid_file)
    done = run_main(capsys, *optimize_args("bad-replicates", storage, *grid, *extra, *BASE_ARGS))
    assert_one_line_error(done, words)
    assert not (tmp_path / "optuna.db").exists(), "nothing is created before the input is checked"
