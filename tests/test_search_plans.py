"""Grids, spaces, objectives, samplers and the Optuna storage of `umx-tune optimize` (no training)."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import REPO
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from umx_tune.cli.options import option_name
from umx_tune.config import TrainConfig, param_fields
from umx_tune.errors import ConfigError
from umx_tune.search import choices, objectives, plans, show, storage, worker
from umx_tune.search.settings import Request
from umx_tune.search.setup import StudyContext

STUDY_DOC = REPO / "docs" / "study.md"
STUDY_GRID_HEADING = "## The fixed study grid"


def markdown_table(text: str, heading: str) -> list[dict[str, str]]:
    """The rows of the first table after `heading` in a markdown text, as {column: cell}."""
    lines = text[text.index(heading) :].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    header, rule, *rows = table
    assert all(set(cell) <= set("-:") for cell in rule), f"no table rule under {header}"
    return [dict(zip(header, row, strict=True)) for row in rows]


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_seed_grid_is_the_study_grid_of_the_docs() -> None:
    """docs/study.md's grid table and the shipped seed grid cannot drift apart."""
    documented = {}
    for row in markdown_table(STUDY_DOC.read_text(), STUDY_GRID_HEADING):
        name = row.pop("name")
        documented[name] = {key: yaml.safe_load(cell) for key, cell in row.items()}
    grid = plans.load_grid("seed", TrainConfig())
    assert [entry.name for entry in grid.entries] == list(documented)
    assert {entry.name: entry.values for entry in grid.entries} == documented


def test_default_space_covers_the_issue_parameters() -> None:
    space = plans.load_space("default", TrainConfig())
    wanted = {
        "hidden_size",
        "batch_size",
        "samples_per_track",
        "lr",
        "seq_dur",
        "unidirectional",
        "bandwidth",
    }
    assert wanted <= set(space.params)
    assert space.params["lr"] == FloatDistribution(1e-4, 1e-2, log=True)


def test_plans_round_trip_through_json() -> None:
    grid = plans.load_grid("seed", TrainConfig())
    space = plans.load_space("default", TrainConfig())
    assert plans.plan_from_json(grid.to_json()).to_json() == grid.to_json()
    assert plans.plan_from_json(space.to_json()).to_json() == space.to_json()


def test_grid_distributions_are_the_values_used() -> None:
    dists = plans.load_grid("seed", TrainConfig()).distributions()
    assert dists["batch_size"] == CategoricalDistribution([8, 4, 16, 32])
    assert dists["epochs"] == CategoricalDistribution([1, 4, 5])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("entries:\n  a: {hidden_size: 16\n", "malformed YAML at line 3"),
        ("entries:\n  a: {epochs: 1}\n  a: {epochs: 2}\n", "line 3, column 3: duplicate key 'a'"),
        ("entries:\n  a: {epochs: 1}\n  b: {hiden_size: 8}\n", "entry 'b': unknown parameter 'hiden_size'"),
        ("entries:\n  a: {epochs: 0}\n", "entry 'a': epochs=0 is out of range; must be >= 1"),
        ("entries:\n  a: {lr: fast}\n", "entry 'a': lr='fast' is not a valid float"),
        ("entries:\n  a: {seq_dur: 30}\n", "entry 'a': seq_dur=30 s is longer than the synthetic tracks"),
        ("entries: {}\n", "'entries' must map entry names"),
        ("entry:\n  a: {epochs: 1}\n", "missing key 'entries'"),
        ("entries:\n  a: 3\n", "entry 'a': expected a mapping"),
    ],
)
def test_bad_grid_files_name_file_entry_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, "g.yaml", text)
    with pytest.raises(ConfigError) as err:
        plans.load_grid(path, TrainConfig())
    assert str(err.value).startswith(path)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("hiden_size: {type: int, low: 1, high: 2}", "params.hiden_size: unknown parameter 'hiden_size'"),
        (
            "hidden_size: {type: int, low: 0, high: 64}",
            "params.hidden_size.low: hidden_size=0 is out of range",
        ),
        ("lr: {type: int, low: 1, high: 2}", "params.lr: lr is a float parameter; 'type: int' does not fit"),
        ("lr: {type: float, low: 0.1, high: 0.01}", "params.lr:"),
        ("lr: {type: float, low: 0.001}", "params.lr: missing key 'high'"),
        ("lr: {type: float, low: 0.001, high: 0.1, steps: 2}", "params.lr: unknown key 'steps'"),
        ("batch_size: {type: categorical, choices: [4, 0]}", "params.batch_size.choices: batch_size=0"),
        ("target: {type: categorical, choices: [vocals, piano]}", "target='piano' is not allowed"),
        ("lr: {type: normal}", "params.lr: 'type' must be one of int, float, categorical"),
    ],
)
def test_bad_space_files_name_file_and_key(tmp_path: Path, spec: str, message: str) -> None:
    path = write(tmp_path, "s.yaml", f"params:\n  {spec}\n")
    with pytest.raises(ConfigError) as err:
        plans.load_space(path, TrainConfig())
    assert str(err.value).startswith(path)
    assert message in str(err.value)


@pytest.mark.parametrize("text", ["params: {}\n", "params: [lr]\n"])
def test_space_params_must_be_a_non_empty_mapping(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, "s.yaml", text)
    with pytest.raises(ConfigError, match="'params' must map parameter names to distributions"):
        plans.load_space(path, TrainConfig())


def test_unknown_shipped_names() -> None:
    with pytest.raises(ConfigError, match="unknown grid 'sede'; shipped grids: seed"):
        plans.load_grid("sede", TrainConfig())
    with pytest.raises(ConfigError, match="unknown space 'wide'; shipped spaces: default"):
        plans.load_space("wide", TrainConfig())


def test_space_turns_a_trial_into_a_config() -> None:
    space = plans.Space(
        "s",
        {
            "hidden_size": IntDistribution(16, 64, step=16),
            "unidirectional": CategoricalDistribution([False, True]),
        },
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    trial = study.ask()
    config = space.config_for(trial, TrainConfig(epochs=2))
    assert config.hidden_size in (16, 32, 48, 64) and config.epochs == 2
    assert trial.params == {"hidden_size": config.hidden_size, "unidirectional": config.unidirectional}


def test_show_grid_and_space_print_what_would_run() -> None:
    base = TrainConfig(seq_dur=1.0)
    table = show.grid_table(plans.load_grid("seed", base), base)
    assert "open-unmix5  32" in table and "seq_dur=1" in table
    assert "lr                 float 0.0001 .. 0.01 (log scale)" in show.space_table(
        plans.load_space("default", base), base
    )


def test_registries() -> None:
    assert objectives.get("valid_loss").directions == ("minimize",)
    assert objectives.get("sdr").directions == ("maximize",)
    with pytest.raises(ConfigError, match="unknown objective"):
        objectives.get("loss")
    assert {"tpe", "random", "cmaes"} <= set(choices.SAMPLERS)
    assert {"median", "hyperband", "none"} <= set(choices.PRUNERS)
    assert isinstance(choices.make_sampler("tpe", 0), optuna.samplers.TPESampler)
    settings = choices.PrunerSettings(startup_trials=2, max_epochs=4)
    assert isinstance(choices.make_pruner("hyperband", settings), optuna.pruners.HyperbandPruner)
    with pytest.raises(ConfigError, match="unknown pruner 'mean'"):
        choices.check_names("tpe", "mean")


def test_join_refuses_a_different_objective_or_base() -> None:
    base = {"epochs": 2, "seq_dur": 1.0}
    grid = plans.load_grid("seed", TrainConfig(seq_dur=1.0))
    request = Request("s", grid, None, None, base, None, None, None)
    stored = request.new_settings("valid_loss")
    assert stored.pruner == "none"  # a grid replays every entry in full
    space = plans.load_space("default", TrainConfig())
    assert Request("t", space, None, 4, {}, None, None, None).new_settings("valid_loss").pruner == "median"
    assert request.join(stored) == stored
    other = Request("s", None, "sdr", None, {}, None, None, None)
    with pytest.raises(ConfigError, match="optimizes valid_loss, not sdr"):
        other.join(stored)
    with pytest.raises(ConfigError, match=r"created with epochs=2 \(given 3\)"):
        Request("s", None, None, None, {"epochs": 3}, None, None, None).join(stored)
    assert (
        Request("s", None, None, None, {"device": "cpu"}, None, None, None).join(stored).base.device == "cpu"
    )


def test_default_storage_sits_beside_a_local_tracking_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(storage.STORAGE_ENV, raising=False)
    assert storage.default_url("sqlite:////data/mlflow.db") == "sqlite:////data/optuna.db"
    assert storage.default_url("file:///data/mlruns") == "sqlite:////data/optuna.db"
    assert storage.default_url("http://10.0.0.1:5000", warn=False).endswith("/optuna/10.0.0.1_5000.db")
    monkeypatch.setenv(storage.STORAGE_ENV, "postgresql://u:secret@db/optuna")
    assert storage.default_url("http://10.0.0.1:5000") == "postgresql://u:secret@db/optuna"
    assert storage.masked("postgresql://u:secret@db/optuna") == "postgresql://u:***@db/optuna"


def _claim_all(url: str, queue: multiprocessing.Queue) -> None:
    """Claim queued trials with the workers' own claim until none is left; report the numbers claimed."""
    raw = storage.open_storage(url, storage.HeartbeatSettings.every(5), lambda study, trial: None)
    space = plans.load_space("default", TrainConfig())
    ctx = StudyContext(
        settings=Request("race", space, None, 120, {}, None, None, None).new_settings("valid_loss"),
        objective=objectives.get("valid_loss"),
        storage=raw,
        storage_url=url,
        study_id=raw.get_study_id_from_name("race"),
        parent_run_id="",  # claims do not touch MLflow
        created=False,
    )
    study = optuna.load_study(study_name="race", storage=raw)
    claimed = []
    while (trial := worker.claim(ctx, study)) is not None:
        claimed.append(trial.number)
    queue.put(claimed)


def test_sqlite_claims_are_atomic_across_processes(tmp_path: Path) -> None:
    """Plain RDBStorage on sqlite lets two processes claim one WAITING trial; ours must not."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    raw = storage.open_storage(url, storage.HeartbeatSettings.every(5), lambda study, trial: None)
    study = optuna.create_study(storage=raw, study_name="race")
    for _ in range(120):
        study.enqueue_trial({})
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    workers = [context.Process(target=_claim_all, args=(url, queue)) for _ in range(4)]
    for process in workers:
        process.start()
    claimed = [n for _ in workers for n in queue.get(timeout=120)]
    for process in workers:
        process.join(timeout=30)
    assert sorted(claimed) == list(range(120))


def test_mlproject_optimize_entry_point_has_every_option() -> None:
    project = yaml.safe_load((REPO / "MLproject").read_text())
    entry = project["entry_points"]["optimize"]
    from umx_tune.cli.optimize import optimize as command

    # `mlflow run --experiment-name` chooses the experiment (the study adopts the project's run);
    # output, printing and process-placement options are for the command line
    local = {"quiet", "show_grid", "show_space", "checkpoint_dir", "experiment"}
    local |= {"check", "repair"}  # the study audit prints and exits, as --show-grid does
    local |= {"backend", "spark_master", "spark_workers"}
    local |= {f"no_{f.name}" for f in param_fields()}  # --no-audio: MLproject passes --audio false
    options = {p.name for p in command.params} - local
    assert set(entry["parameters"]) == options | {f.name for f in param_fields()}
    for name in entry["parameters"]:
        assert f"{option_name(name)} {{{name}}}" in entry["command"]
    assert entry["command"].startswith("python -m umx_tune optimize")
